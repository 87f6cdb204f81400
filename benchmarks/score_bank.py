"""Benchmark: the image score with memory banks (``model.score_bank_size``) on runs trained without them.

    python benchmarks/score_bank.py runs/bench_screw_cpu_patch/seed0 runs/bench_bottle_cpu_patch/seed0 --size 4096

The banks only enter the image score, never the loss, so a run trained without them gives exactly the
network that training with them would give; what training adds at its end is done here by the same function
(``fit_score_and_thresholds``: banks from the run's trained normals, standardisation on its held-out
normals, thresholds refitted on the combined score). Each run is copied to ``<run>_bank<size>`` with
``model.score_bank_size`` set, and both are evaluated through the API; the figures before and after go into
``<results>/score_bank.json`` and ``score_bank.md``. Nothing here is a target: it prints what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import prnad
from prnad.checkpoint import load_checkpoint, save_checkpoint
from prnad.config import to_dict
from prnad.runs import RunPaths
from prnad.training.trainer import _validated_split, build_pool, fit_score_and_thresholds

REPO = Path(__file__).resolve().parents[1]
KEYS = ("image_auroc", "pixel_auroc", "pro", "pixel_ap")


def with_score_banks(run: Path, size: int, out: Path) -> Path:
    """Copy the finished ``run`` to ``out`` with score banks of ``size``, as training would have made them."""
    ckpt = load_checkpoint(RunPaths(run).model)
    config = dataclasses.replace(ckpt.config, model=dataclasses.replace(ckpt.config.model, score_bank_size=size))
    category, seen = _validated_split(config)
    pool, calibration, info = build_pool(config, category, seen, np.random.default_rng(config.train.seed))
    if calibration is None or info["seen_anomalies"] != ckpt.info["seen_anomalies"]:
        raise SystemExit(f"{run}: trained without held-out normals, or on another split; cannot add score banks")
    info = {**ckpt.info, "score_bank_added_after_training": True}
    started = time.perf_counter()
    fit_score_and_thresholds(ckpt.model, pool, calibration, config, torch.device("cpu"), info)
    info["score_bank_seconds"] = round(time.perf_counter() - started, 1)
    paths = RunPaths(out)
    out.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return save_checkpoint(paths.model, model=ckpt.model, config=config, iteration=ckpt.iteration, info=info)


def _figures(result: dict) -> dict:
    return {
        "metrics": {k: result["metrics"][k] for k in KEYS},
        "per_type_image_auroc": {t: v["image_auroc"] for t, v in result["per_type"].items()},
        "at_threshold": result.get("at_threshold"),
        "ms_per_image": result["inference_ms_per_image"],
    }


def _markdown(data: dict) -> str:
    lines = ["# Image score with memory banks, added to trained runs", "", f"Command: `{data['command']}`", ""]
    lines += [f"Machine: {data['machine']}, {data['date']}.", ""]
    lines += ["| run | score | image AUROC | pixel AUROC | PRO | pixel AP | image P / R / F1 at threshold | ms/image |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for run, r in data["runs"].items():
        for label, f in (("top-K (spec)", r["before"]), (f"banks {r['size']}", r["after"])):
            m = f["metrics"]
            at = (f.get("at_threshold") or {}).get("image") or {}
            prf = " / ".join(f"{at[k]:.1f}" for k in ("precision", "recall", "f1")) if at else "-"
            cells = [run, label, *(f"{m[k]:.1f}" for k in KEYS), prf, f"{f['ms_per_image']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Image AUROC per defect type:", ""]
    for run, r in data["runs"].items():
        types = sorted(r["before"]["per_type_image_auroc"])
        lines += [
            f"- {run}: "
            + ", ".join(
                f"{t} {r['before']['per_type_image_auroc'][t]:.1f} -> {r['after']['per_type_image_auroc'][t]:.1f}"
                for t in types
            )
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="score_bank")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    path = args.results / f"{args.name}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    data.update(
        command="python " + shlex.join(["benchmarks/score_bank.py", *(sys.argv[1:] if argv is None else argv)]),
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
        date=dt.date.today().isoformat(),
    )
    for run in args.runs:
        out = run.with_name(f"{run.name}_bank{args.size}")
        with_score_banks(run, args.size, out)
        before = _figures(prnad.load(run, device="cpu").evaluate())
        after = _figures(prnad.load(out, device="cpu").evaluate())
        data["runs"][str(run)] = {"size": args.size, "before": before, "after": after}
        print(run, before["metrics"], "->", after["metrics"], flush=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    (args.results / f"{args.name}.md").write_text(_markdown(data))
    print(_markdown(data))


if __name__ == "__main__":
    main()
