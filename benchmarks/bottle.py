"""Benchmark: train + evaluate PRN on an MVTec AD category for several seeds; write results JSON and Markdown.

    python benchmarks/bottle.py --seeds 0 1 2
    python benchmarks/bottle.py --seeds 0 1 2 --data ../shared/data/mvtec_ad/screw --name screw

Each seed's run goes to ``runs/bench_<name>/seed<N>``; its measured figures (with the seed's own command,
machine and date) are merged into ``<results>/<name>.json`` under a file lock, so seeds may run as parallel
processes, and ``<name>.md`` is rewritten from it. It goes through the Python API (prnad.train, Detector.evaluate).
Besides the reported metrics (pixel metrics on the logits, score in float64), it records the metrics as the
float32 sigmoid maps give them, ties at 1.0 included, to measure what the tie-free evaluation changes.
With ``--existing`` it trains nothing and evaluates the finished run in each seed's folder (e.g. one that
``score_bank.py`` gave score banks after training); its train minutes are then the run's own record.
Nothing here is a target: it prints what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import fcntl
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import prnad
from prnad import config
from prnad.data import load_samples, scan_category
from prnad.experiments import load_experiment
from prnad.metrics import compute_metrics

REPO = Path(__file__).resolve().parents[1]
ABLATION = REPO / "benchmarks" / "experiments" / "ablation.yaml"  # the ablation's candidates
PAPER = {  # PRN's published per-category figures (image AUROC, pixel AUROC, PRO, pixel AP), ResNet18
    "bottle": {"image_auroc": 100.0, "pixel_auroc": 99.4, "pro": 97.0, "pixel_ap": 92.3},
    "screw": {"image_auroc": 95.9, "pixel_auroc": 97.5, "pro": 92.4, "pixel_ap": 44.9},
}
NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO", "pixel_ap": "pixel AP"}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", default=str(REPO.parent / "shared/data/mvtec_ad/bottle"))
    p.add_argument("--textures", default=str(REPO.parent / "shared/data/dtd/images"))
    p.add_argument("--config", default=str(REPO / "configs/mobilenet_v2_tf.yaml"))
    p.add_argument("--weights", help="encoder weights file (default: the one the config names)")
    p.add_argument("--name", help="results file stem (default: the category folder's name)")
    p.add_argument("--runs", help="folder of the seeds' run folders (default runs/bench_<name>)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="folder of <name>.json/.md")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. train.device=cuda"
    )
    p.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the JSON, run nothing")
    p.add_argument("--resume", action="store_true", help="resume a seed whose run folder holds a checkpoint")
    p.add_argument(
        "--existing",
        action="store_true",
        help="evaluate the finished run in each seed's folder instead of training (e.g. banks added by "
        "score_bank.py); train min then comes from the run's own record",
    )
    p.add_argument(
        "--from-ablation",
        metavar="CANDIDATE",
        help="record the seeds' runs of this ablation candidate (<results>/ablation.json) instead of training; "
        "refused unless the candidate's config is the one this command would train",
    )
    args = p.parse_args(argv)
    args.name = args.name or Path(args.data).name
    args.runs = args.runs or str(REPO / "runs" / f"bench_{args.name}")
    return args


def flattened(values: dict, prefix: str = "") -> dict[str, object]:
    """A nested dict as ``{"model.head_scales": [1, 2], ...}``."""
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out |= flattened(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def dotted_overrides(items: list[str], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """KEY=VALUE pairs (dotted keys, values parsed as YAML, e.g. model.head_scales=[1,2]) merged into
    ``values`` (default: a new dict), as a nested dict."""
    values = {} if values is None else values
    for item in items:
        key, _, raw = item.partition("=")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return values


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The --set KEY=VALUE pairs (values parsed as YAML) and the textures/weights paths, as a nested dict."""
    values: dict[str, Any] = {"data": {"textures": args.textures}}
    if args.weights:
        values["model"] = {"encoder": {"weights": args.weights}}
    return dotted_overrides(args.set, values)


def saturated_metrics(
    maps_dir: Path, root: Path, image_size: int, topk: int, *, banks: bool = False
) -> dict[str, float | None]:
    """The metrics as the float32 sigmoid maps give them (ties at 1.0 included): score = top-K mean of the map,
    or, with score ``banks`` (a score that is not a function of the map), the score as evaluated."""
    rows = list(csv.DictReader((maps_dir / "scores.csv").open()))
    maps = np.stack([np.load(maps_dir / Path(r["path"]).with_suffix(".npy")) for r in rows])  # (N, S, S) float32
    if banks:
        scores = np.array([float(r["score"]) for r in rows])
    else:
        scores = np.sort(maps.reshape(len(rows), -1), axis=1)[:, -topk:].mean(axis=1, dtype=np.float32)
    labels = np.array([int(r["label"]) for r in rows])
    by_path = {s.path.relative_to(root / "test").as_posix(): s for s in scan_category(root).test}
    _, masks = load_samples([by_path[r["path"]] for r in rows], image_size)
    return {k: None if v is None else round(v, 4) for k, v in compute_metrics(scores, labels, maps, masks).items()}


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Train and evaluate one seed through the API; returns its measured figures."""
    out = Path(args.runs) / f"seed{seed}"
    resume = args.resume and (out / "checkpoint.safetensors").is_file()
    started = time.perf_counter()
    if args.existing:
        detector = prnad.load(out, device="cpu")
        if detector.config.train.seed != seed:
            raise SystemExit(f"{out}: holds a run of seed {detector.config.train.seed}, not {seed}")
        recorded = detector.info
        train_s = recorded["train_seconds"] + recorded.get("score_bank_seconds", 0.0)
    else:
        detector = prnad.train(
            args.data,
            out,
            config=args.config,
            seed=seed,
            overrides=overrides(args),
            resume=resume,
            overwrite=not resume,
        )
        train_s = time.perf_counter() - started
    result = detector.evaluate(save_maps=out / "maps")
    info = result["train_info"]
    config = result["config"]
    iterations = config["train"]["iterations"]
    resumed_from = info.get("resumed_from_iteration")
    return {
        "seed": seed,
        "metrics": result["metrics"],
        "per_type": result["per_type"],
        "at_threshold": result.get("at_threshold"),
        "normals_trained": info.get("n_normal"),
        "normals_held_out": len(info.get("calibration_normals", [])),
        "thresholds": {k: v for k, v in (info.get("thresholds") or {}).items() if not k.endswith("_scores")},
        "metrics_float32_sigmoid": saturated_metrics(
            out / "maps",
            Path(args.data),
            config["data"]["image_size"],
            config["model"]["topk"],
            banks=config["model"]["score_bank_size"] > 0,
        ),
        "train_minutes": round(train_s / 60, 2),
        "train_minutes_from": "the run's record (training + score banks)" if args.existing else "wall clock of train",
        "run_folder": str(out),
        "score_bank_added_after_training": bool(info.get("score_bank_added_after_training")),
        "iterations": iterations,
        "iterations_timed": iterations - (resumed_from or 0),  # train_minutes covers these steps only
        "resumed_from_iteration": resumed_from,
        "train_plus_evaluate_minutes": round((time.perf_counter() - started) / 60, 2),
        "inference_ms_per_image": result["inference_ms_per_image"],
        "inference_ms_median": result["inference_ms_median"],
        "device": result["device"],
        "test_images": result["test_images"],
        "encoder": result["encoder"],
        "batch_size": config["train"]["batch_size"],
        "command": "python benchmarks/bottle.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": f"{platform.node()} {platform.machine()}, {result['device']}",
        "date": dt.date.today().isoformat(),
        "prnad_version": result["prnad_version"],
    }


def summarise(runs: dict[str, dict], key: str = "metrics") -> dict:
    """Mean and spread (population std, min, max) of every metric over the measured seeds."""
    summary = {}
    for metric in NAMES:
        values = [r[key][metric] for r in runs.values() if r.get(key, {}).get(metric) is not None]
        if values:
            summary[metric] = {
                "mean": round(statistics.fmean(values), 4),
                "std": round(statistics.pstdev(values), 4),
                "min": round(min(values), 2),
                "max": round(max(values), 2),
                "n": len(values),
            }
    return summary


def _metric_rows(data: dict) -> list[str]:
    paper = PAPER.get(data["category"], {})
    lines = [
        "| metric | mean | std | min | max | seeds | float32-sigmoid mean | paper (ResNet18) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    saturated = data.get("summary_float32_sigmoid", {})
    for key, s in data["summary"].items():
        sat = saturated.get(key, {}).get("mean")
        lines.append(
            f"| {NAMES[key]} | {s['mean']:.1f} | {s['std']:.1f} | {s['min']:.1f} | {s['max']:.1f} | {s['n']} | "
            f"{'n/a' if sat is None else f'{sat:.1f}'} | {paper.get(key, float('nan')):.1f} |"
        )
    return lines


def _seed_rows(data: dict) -> list[str]:
    lines = [
        "| seed | image AUROC | pixel AUROC | PRO | pixel AP | train min | steps timed | ms/image | device | date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"].values():
        m = r["metrics"]
        timed = r.get("iterations_timed", r["iterations"])
        lines.append(
            f"| {r['seed']} | {m['image_auroc']:.1f} | {m['pixel_auroc']:.1f} | {m['pro']:.1f} | {m['pixel_ap']:.1f} | "
            f"{r['train_minutes']:.1f} | {timed} of {r['iterations']} | {r['inference_ms_per_image']:.1f} | "
            f"{r['device']} | {r['date']} |"
        )
    return lines


def _per_type_rows(data: dict) -> list[str]:
    runs = [r for r in data["runs"].values() if "per_type" in r]
    if not runs:
        return []
    lines = ["", "Per defect type (mean over seeds; each type against the normal test images):", ""]
    lines += ["| defect type | image AUROC | pixel AUROC | PRO | pixel AP |", "|---|---|---|---|---|"]
    for defect in runs[0]["per_type"]:
        cells = [statistics.fmean(r["per_type"][defect][k] for r in runs) for k in NAMES]
        lines.append(f"| {defect} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return lines


def _decision_rows(data: dict) -> list[str]:
    runs = [r for r in data["runs"].values() if r.get("at_threshold")]
    if not runs:
        return []
    lines = ["", "At the thresholds fitted without the test set (see each run's methods in the JSON):", ""]
    lines += [
        "| seed | image threshold | image precision | image recall | image F1 | good flagged (promised) "
        "| defective missed | pixel threshold | pixel precision | pixel recall | pixel F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        at, i, p = r["at_threshold"], r["at_threshold"]["image"], r["at_threshold"]["pixel"]
        lines.append(
            f"| {r['seed']} | {at['image_threshold']:.4f} | {i['precision']:.1f} | {i['recall']:.1f} | {i['f1']:.1f} | "
            f"{_line_cells(i)} | {at['pixel_threshold']:.4f} | {p['precision']:.1f} | {p['recall']:.1f} | {p['f1']:.1f} |"
        )
    return lines


def _line_cells(image: dict) -> str:
    """Good parts flagged with the promised rate, and defective parts missed (percent); '-' for runs evaluated
    before evaluate reported them."""
    if "good_flagged" not in image:
        return "- | -"
    promise = image.get("promise")
    promised = f" ({100 * promise['expected_rate']:.1f})" if promise else ""
    return f"{image['good_flagged']:.1f}{promised} | {image['defective_missed']:.1f}"


def write_markdown(path: Path, data: dict) -> None:
    first = next(iter(data["runs"].values()))
    lines = [f"# PRN on MVTec AD {data['category']}", "", "Commands, one per seed:", ""]
    lines += [f"- seed {r['seed']}: `{r['command']}` ({r['machine']}, {r['date']})" for r in data["runs"].values()]
    lines += ["", *_metric_rows(data), "", *_seed_rows(data), *_decision_rows(data), *_per_type_rows(data)]
    enc = first["encoder"]
    lines += [
        "",
        f"Encoder: {enc['backbone']}, weights {enc['weights']} (the paper's figures are for ResNet18).",
        f"Test set: the category's test split minus the seed's seen anomalies; metrics at 256x256 on {first['test_images']} images.",
        "Pixel metrics on the logits, image score in float64 (no float32 saturation ties); the float32-sigmoid column",
        "recomputes the metrics from the saved float32 sigmoid maps, ties at 1.0 included, as evaluations before 0.2 did.",
        "ms/image: batch 1, warm-up excluded, prototype matching included. 'steps timed': train min covers these steps.",
    ]
    added = [str(r["seed"]) for r in data["runs"].values() if r.get("score_bank_added_after_training")]
    if added:
        lines += [
            f"Seeds {', '.join(added)}: score banks added after training by benchmarks/score_bank.py (the banks never",
            "enter the loss, so this equals training with them; tests/test_score_bank.py checks it); train min is the",
            "run's record of its training plus the banks' fitting.",
        ]
    imported = {r["from_ablation"] for r in data["runs"].values() if r.get("from_ablation")}
    if imported:
        lines += [
            f"Recorded from benchmarks/results/ablation.json (candidate {', '.join(sorted(imported))}, trained by the",
            "ablation command above): `bottle.py --from-ablation` checked that its config is the one this script trains.",
        ]
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def locked(json_path: Path):
    """Hold an exclusive lock on the results file while it is read, changed and written."""
    with json_path.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record(json_path: Path, category: str, run: dict) -> None:
    with locked(json_path):
        data = json.loads(json_path.read_text()) if json_path.is_file() else {"category": category, "runs": {}}
        data["runs"][str(run["seed"])] = run
        data["runs"] = dict(sorted(data["runs"].items(), key=lambda kv: int(kv[0])))
        data["summary"] = summarise(data["runs"])
        data["summary_float32_sigmoid"] = summarise(data["runs"], "metrics_float32_sigmoid")
        data.pop("command", None)  # each seed carries its own command
        json_path.write_text(json.dumps(data, indent=2) + "\n")
        write_markdown(json_path.with_suffix(".md"), data)


def from_ablation(args: argparse.Namespace, seed: int) -> dict:
    """The ablation's run of ``args.from_ablation`` for this category and seed, if the candidate's config (the
    spec's model plus its changes) equals the config this command trains; its command is the ablation's."""
    category = Path(args.data).name
    trained = config.build_config(config.load_yaml(args.config), overrides(args))
    variants = {v.name: v for v in load_experiment(ABLATION).variants}
    sets = [f"{k}={json.dumps(v)}" for k, v in flattened(variants[args.from_ablation].overrides).items()]
    candidate = config.build_config(config.load_yaml(args.config), dotted_overrides(sets, overrides(args)))
    if config.to_dict(candidate) != config.to_dict(trained):
        raise SystemExit(f"candidate {args.from_ablation} is not the config this command trains: nothing recorded")
    runs = json.loads((Path(args.results) / "ablation.json").read_text())["runs"].values()
    found = [
        r
        for r in runs
        if (r["category"], r["candidate"], r["seed"], r["iterations"])
        == (category, args.from_ablation, seed, trained.train.iterations)
    ]
    if len(found) != 1:
        raise SystemExit(f"ablation.json holds {len(found)} runs of {category}/{args.from_ablation}/seed{seed}")
    run = {k: v for k, v in found[0].items() if k not in ("candidate", "category", "ablation_command")}
    return {**run, "command": found[0]["ablation_command"], "from_ablation": args.from_ablation}


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    json_path = results / f"{args.name}.json"
    if args.report_only:
        write_markdown(json_path.with_suffix(".md"), json.loads(json_path.read_text()))
        return
    for seed in args.seeds:
        run = from_ablation(args, seed) if args.from_ablation else run_seed(args, seed)
        record(json_path, Path(args.data).name, run)
        print(json.dumps({k: run[k] for k in ("seed", "metrics", "train_minutes", "inference_ms_per_image")}))


if __name__ == "__main__":
    main()
