"""Benchmark: the image score with memory banks (``model.score_bank_size``) on runs trained without them.

    python benchmarks/score_bank.py runs/bench_screw_cpu_patch/seed0 runs/bench_bottle_cpu_patch/seed0 --size 4096
    python benchmarks/score_bank.py runs/bench_screw/seed0 --size 4096 --map-weights 1 0.5 --name map_weights
    python benchmarks/score_bank.py runs/ablation/bottle_patch_bank_fast/seed0 --query-stride 16 --name bank_query

The banks only enter the image score, never the loss, so a run trained without them gives exactly the
network that training with them would give; what training adds at its end is done here by the same function
(``prnad.add_score_banks``: banks from the run's trained normals, standardisation on its held-out
normals, thresholds refitted on the combined score). Each run is copied to ``<run>_bank<size>`` with
``model.score_bank_size`` set (and ``model.bank_map_weights`` with ``--map-weights``: the weights of the banks'
maps in the fused map, which never enter the loss either; the copy is then ``<run>_bank<size>_w<w8>-<w16>``;
and ``model.bank_query_stride`` with ``--query-stride``, the grid the banks are queried on: ``..._q<stride>``;
``model.coarse_bank_size`` with ``--coarse-size``, the stride-16 bank's own size: ``..._bank<size>-<coarse>``),
and both are evaluated through the API; the figures before and after go into
``<results>/score_bank.json`` and ``score_bank.md``. Nothing here is a target: it prints what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch

import prnad

REPO = Path(__file__).resolve().parents[1]
KEYS = ("image_auroc", "pixel_auroc", "pro", "pixel_ap")


def _figures(result: dict) -> dict:
    return {
        "metrics": {k: result["metrics"][k] for k in KEYS},
        "per_type_image_auroc": {t: v["image_auroc"] for t, v in result["per_type"].items()},
        "at_threshold": result.get("at_threshold"),
        "ms_per_image": result["inference_ms_per_image"],
    }


PAPER = {"bottle": (100.0, 99.4, 97.0, 92.3), "screw": (95.9, 97.5, 92.4, 44.9)}  # PRN, ResNet18


def _before_label(r: dict) -> str:
    """What the "before" figures of a run are: the spec's map and score, or the banks it was trained with."""
    size = r.get("trained_bank_size", 0)
    return f"as trained (banks {size}{_weights(r.get('trained_map_weights'))})" if size else "decoder map, top-K"


def _after_label(r: dict) -> str:
    stride = r.get("query_stride", 8)
    coarse = r.get("coarse_size", r["size"])
    sizes = f"{r['size']}" if coarse == r["size"] else f"{r['size']} (stride 8) / {coarse} (stride 16)"
    return f"banks {sizes}{_weights(r.get('map_weights'))}" + (f", queried every {stride} px" if stride != 8 else "")


def _weights(weights: list[float] | None) -> str:
    """The label's ending for the banks' weights in the fused map (strides 8 / 16); empty where not recorded."""
    return f", map weights {weights[0]:g} / {weights[1]:g}" if weights else ""


def _prf(at: dict | None, level: str) -> str:
    part = (at or {}).get(level)
    return " / ".join(f"{part[k]:.1f}" for k in ("precision", "recall", "f1")) if part else "-"


def _markdown(data: dict) -> str:
    commands = dict.fromkeys(r.get("command", data["command"]) for r in data["runs"].values())
    lines = ["# Score banks added to trained runs", "", "Commands:", "", *(f"- `{c}`" for c in commands), ""]
    lines += [
        f"Machine: {data['machine']}, {data['date']}. The maps and scores of each run before (as it was trained: the decoder's",
    ]
    lines += [
        "map and top-K score as the spec, or its own banks) and after (`model.score_bank_size` set to the size shown,",
        "`model.bank_map_weights` to the map weights shown), on the test split minus the seed's seen anomalies.",
        "",
    ]
    lines += ["| run | category | seed | train min | model | image AUROC | pixel AUROC | PRO | pixel AP |"]
    lines[-1] += " image P / R / F1 | pixel P / R / F1 | ms/image |"
    lines += ["|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run, r in data["runs"].items():
        for label, f in ((_before_label(r), r["before"]), (_after_label(r), r["after"])):
            m = f["metrics"]
            cells = [run, r["category"], str(r["seed"]), str(r.get("train_minutes", "-")), label]
            cells += [f"{m[k]:.1f}" for k in KEYS]
            cells += [_prf(f["at_threshold"], "image"), _prf(f["at_threshold"], "pixel"), f"{f['ms_per_image']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Means over the seeds measured:",
        "",
        "| category | model | seeds | image AUROC | pixel AUROC | PRO | pixel AP |",
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for category in sorted({r["category"] for r in data["runs"].values()}):
        runs = [r for r in data["runs"].values() if r["category"] == category]
        seeds = ", ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        befores = " / ".join(sorted({_before_label(r) for r in runs}))
        afters = " / ".join(sorted({_after_label(r) for r in runs}))
        for label, key in ((befores, "before"), (afters, "after")):
            means = [statistics.fmean(r[key]["metrics"][k] for r in runs) for k in KEYS]
            lines.append(f"| {category} | {label} | {seeds} | " + " | ".join(f"{v:.1f}" for v in means) + " |")
        if category in PAPER:
            lines.append(
                f"| {category} | paper (PRN, ResNet18) | | " + " | ".join(f"{v:.1f}" for v in PAPER[category]) + " |"
            )
    lines += ["", "Image AUROC per defect type (before -> after):", ""]
    for run, r in data["runs"].items():
        types = sorted(r["before"]["per_type_image_auroc"])
        pairs = (
            f"{t} {r['before']['per_type_image_auroc'][t]:.1f} -> {r['after']['per_type_image_auroc'][t]:.1f}"
            for t in types
        )
        lines.append(f"- {run}: " + ", ".join(pairs))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="finished runs (none with --report-only)")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--coarse-size", type=int, help="model.coarse_bank_size of the copy (default: --size)")
    p.add_argument(
        "--map-weights",
        type=float,
        nargs=2,
        metavar=("W8", "W16"),
        help="model.bank_map_weights of the copy (the run's own if not given)",
    )
    p.add_argument(
        "--query-stride",
        type=int,
        choices=(8, 16),
        help="model.bank_query_stride of the copy (the run's own if not given)",
    )
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="score_bank")
    p.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the JSON, run nothing")
    p.add_argument(
        "--keep-before",
        action="store_true",
        help="reuse a run's figures without banks from the JSON when it holds them (the run is unchanged)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    path = args.results / f"{args.name}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if args.report_only:
        (args.results / f"{args.name}.md").write_text(_markdown(data))
        return
    if not args.runs:
        p.error("name at least one run (or --report-only)")
    data.update(
        command="python " + shlex.join(["benchmarks/score_bank.py", *(sys.argv[1:] if argv is None else argv)]),
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
        date=dt.date.today().isoformat(),
    )
    for run in args.runs:
        suffix = f"_w{args.map_weights[0]:g}-{args.map_weights[1]:g}" if args.map_weights else ""
        suffix += f"_q{args.query_stride}" if args.query_stride else ""
        coarse = f"-{args.coarse_size}" if args.coarse_size else ""
        out = run.with_name(f"{run.name}_bank{args.size}{coarse}{suffix}")
        prnad.add_score_banks(
            run,
            out,
            args.size,
            coarse_size=args.coarse_size,
            map_weights=args.map_weights,
            query_stride=args.query_stride,
            device="cpu",
        )
        trained = prnad.load(run, device="cpu")
        kept = data["runs"].get(str(run), {}).get("before") if args.keep_before else None
        before = kept or _figures(trained.evaluate())
        copy = prnad.load(out, device="cpu")
        after = _figures(copy.evaluate())
        data["runs"][str(run)] = {
            "category": Path(trained.config.data.root).name,
            "seed": trained.config.train.seed,
            "train_minutes": round(trained.info.get("train_seconds", float("nan")) / 60, 1),
            "command": data["command"],
            "size": args.size,
            "coarse_size": args.coarse_size or args.size,
            "trained_bank_size": trained.config.model.score_bank_size,
            "trained_map_weights": list(trained.config.model.bank_map_weights),
            "map_weights": list(copy.config.model.bank_map_weights),
            "query_stride": copy.config.model.bank_query_stride,
            "before": before,
            "after": after,
        }
        print(run, before["metrics"], "->", after["metrics"], flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    (args.results / f"{args.name}.md").write_text(_markdown(data))
    print(_markdown(data))


if __name__ == "__main__":
    main()
