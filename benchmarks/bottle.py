"""Benchmark: train + evaluate PRN on MVTec AD bottle for several seeds; write results JSON and Markdown.

    python benchmarks/bottle.py --seeds 0 1 2

Each seed's run goes to ``runs/bench_bottle/seed<N>``; its measured figures are merged into
``benchmarks/results/bottle.json`` (seeds measured in earlier sessions are kept, each with its own machine,
command and date), and ``bottle.md`` is rewritten from it. Nothing here is a target: it prints what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

from prnad.cli import main as prnad_main

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAPER = {"image_auroc": 100.0, "pixel_auroc": 99.4, "pro": 97.0, "pixel_ap": 92.3}
NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO", "pixel_ap": "pixel AP"}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", default=str(REPO.parent / "shared/data/mvtec_ad/bottle"))
    p.add_argument("--textures", default=str(REPO.parent / "shared/data/dtd/images"))
    p.add_argument("--config", default=str(REPO / "configs/mobilenet_v2_tf.yaml"))
    p.add_argument("--runs", default=str(REPO / "runs/bench_bottle"))
    p.add_argument("--name", default="bottle", help="results file stem in benchmarks/results")
    p.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the JSON, run nothing")
    p.add_argument("--resume", action="store_true", help="resume a seed whose run folder holds a checkpoint")
    p.add_argument("--extra", default="", help="more flags for prnad train, e.g. '--iterations 300 --device cuda'")
    return p.parse_args(argv)


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Train and evaluate one seed in-process; returns its measured figures."""
    out = Path(args.runs) / f"seed{seed}"
    train_argv = [
        "train",
        "--data",
        args.data,
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--config",
        args.config,
        "--textures",
        args.textures,
        "--no-progress",
        *shlex.split(args.extra),
    ]
    resumed_from = None
    if args.resume and (out / "checkpoint.safetensors").is_file():
        from prnad.checkpoint import load_checkpoint

        resumed_from = load_checkpoint(out / "checkpoint.safetensors").iteration
        train_argv.append("--resume")
    started = time.perf_counter()
    if prnad_main(train_argv) != 0:
        raise SystemExit(f"training seed {seed} failed")
    train_s = time.perf_counter() - started
    if prnad_main(["evaluate", str(out), "--device", _device(args.extra)]) != 0:
        raise SystemExit(f"evaluating seed {seed} failed")
    total_s = time.perf_counter() - started
    result = json.loads((out / "metrics.json").read_text())
    return {
        "seed": seed,
        "metrics": result["metrics"],
        "train_minutes": round(train_s / 60, 2),
        "resumed_from_iteration": resumed_from,  # train_minutes then counts only the resumed part
        "train_plus_evaluate_minutes": round(total_s / 60, 2),
        "inference_ms_per_image": result["inference_ms_per_image"],
        "inference_ms_median": result["inference_ms_median"],
        "device": result["device"],
        "test_images": result["test_images"],
        "encoder": result["encoder"],
        "iterations": result["config"]["train"]["iterations"],
        "batch_size": result["config"]["train"]["batch_size"],
        "command": "python benchmarks/bottle.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": f"{platform.node()} {platform.machine()}, {result['device']}",
        "date": dt.date.today().isoformat(),
    }


def _device(extra: str) -> str:
    flags = shlex.split(extra)
    return flags[flags.index("--device") + 1] if "--device" in flags else "auto"


def summarise(runs: dict[str, dict]) -> dict:
    """Mean and spread (population std, min, max) of every metric over the measured seeds."""
    summary = {}
    for key in PAPER:
        values = [r["metrics"][key] for r in runs.values() if r["metrics"][key] is not None]
        if values:
            summary[key] = {
                "mean": round(statistics.fmean(values), 2),
                "std": round(statistics.pstdev(values), 2),
                "min": round(min(values), 2),
                "max": round(max(values), 2),
                "n": len(values),
            }
    return summary


def write_markdown(path: Path, data: dict) -> None:
    lines = [
        f"# PRN on MVTec AD {data['category']}",
        "",
        f"Command: `{data['command']}`",
        "",
        "| metric | mean | std | min | max | seeds | paper (ResNet18) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, s in data["summary"].items():
        lines.append(
            f"| {NAMES[key]} | {s['mean']:.1f} | {s['std']:.1f} | {s['min']:.1f} | {s['max']:.1f} | {s['n']} | {PAPER[key]:.1f} |"
        )
    lines += [
        "",
        "| seed | image AUROC | pixel AUROC | PRO | pixel AP | train min | ms/image | device | iterations | date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"].values():
        m = r["metrics"]
        lines.append(
            f"| {r['seed']} | {m['image_auroc']:.1f} | {m['pixel_auroc']:.1f} | {m['pro']:.1f} | {m['pixel_ap']:.1f} | "
            f"{r['train_minutes']:.1f} | {r['inference_ms_per_image']:.1f} | {r['device']} | {r['iterations']} | {r['date']} |"
        )
    enc = next(iter(data["runs"].values()))["encoder"]
    lines += [
        "",
        f"Encoder: {enc['backbone']}, weights {enc['weights']} (the paper's figures are for ResNet18).",
        "Test set: the category's test split minus the seed's 10 seen anomalies; metrics at 256x256;",
        "ms/image: batch 1, warm-up excluded, prototype matching included.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{args.name}.json"
    data = json.loads(json_path.read_text()) if json_path.is_file() else {"category": Path(args.data).name, "runs": {}}
    if args.report_only:
        write_markdown(json_path.with_suffix(".md"), data)
        return
    for seed in args.seeds:
        data["runs"][str(seed)] = run_seed(args, seed)
        data["runs"] = dict(sorted(data["runs"].items(), key=lambda kv: int(kv[0])))
        data["summary"] = summarise(data["runs"])
        data["command"] = "python benchmarks/bottle.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        json_path.write_text(json.dumps(data, indent=2) + "\n")
        write_markdown(json_path.with_suffix(".md"), data)
        print(json.dumps(data["runs"][str(seed)], indent=2))


if __name__ == "__main__":
    main()
