"""Benchmark: a trained run on a GPU gives the CPU's numbers, per precision (issue: deploy on the line, the GPU path).

    python benchmarks/gpu_check.py pack --runs runs/ablation/bottle_line_lite/seed0 --out device_data
    python benchmarks/gpu_check.py check --runs device_data/runs/* --data device_data/bottle --device cuda

``pack`` (here) puts what a device call needs into a git-ignored folder that travels with ``carry``: each
run's model file and config, the category's test split and masks at the runs' input size (the images the
model sees anyway, a copy far smaller than the 900 px originals; four train images, for the layout), and the
encoder weights file that a random-head timing reads. ``check`` (there) evaluates every run through the API on
that split on the CPU in float32 (the reference) and on ``--device`` in each of ``--precisions``, and predicts
the maps of ``--images`` test images with both: per precision the metrics, the F1 at the run's thresholds,
the largest metric, map and score differences to the CPU's, and how many decisions changed. Writes
``<results>/<name>.json`` and ``.md``; nothing here is a target: it prints what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import prnad
from prnad.predict import images_below
from prnad.runs import RunPaths
from prnad.utils import device_name, resolve_device
from score_bank import KEYS  # alongside this file
from speed import PRECISIONS

REPO = Path(__file__).resolve().parents[1]


def images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` as predict finds them (hidden ones skipped, sorted by relative
    path); none if the folder is missing."""
    return images_below(folder) if folder.is_dir() else []


def resized_split(data: Path, out: Path, size: int, train_images: int = 4) -> Path:
    """A copy of ``data``'s test split and ground-truth masks at ``size`` x ``size`` (images bilinear, masks
    nearest so that they stay binary) at ``out``; the category's layout and file names kept. Of train/good only
    the first ``train_images``: the layout needs the folder, evaluation never reads it."""
    train = images_under(data / "train")[:train_images]
    for split, resample in (("test", Image.BILINEAR), ("ground_truth", Image.NEAREST), ("train", Image.BILINEAR)):
        for src in images_under(data / split) if split != "train" else train:
            dst = out / src.relative_to(data)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as image:
                image.resize((size, size), resample).save(dst.with_suffix(".png"))
    return out


def pack(runs: list[Path], data: Path, weights: Path | None, out: Path) -> dict:
    """``out``/runs/<name> (model and config of each run, named by its last two path parts), ``out``/<category>
    (the test split at the runs' size) and ``out``/weights/<file>; what was packed."""
    sizes = set()
    packed = []
    for run in runs:
        paths = RunPaths(run)
        name = "_".join(run.parts[-2:])
        target = RunPaths(out / "runs" / name)
        target.root.mkdir(parents=True, exist_ok=True)
        shutil.copy2(paths.model, target.model)
        shutil.copy2(paths.config, target.config)
        sizes.add(prnad.load(run, device="cpu").image_size)
        packed.append(str(target.root))
    if len(sizes) != 1:
        raise SystemExit(f"the runs have different input sizes {sorted(sizes)}; pack them apart")
    split = resized_split(data, out / data.name, sizes.pop())
    if weights is not None:
        (out / "weights").mkdir(parents=True, exist_ok=True)
        shutil.copy2(weights, out / "weights" / weights.name)
    return {"runs": packed, "data": str(split), "weights": str(weights) if weights else None}


def _maps_and_scores(detector: prnad.Detector, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    results = detector.predict(files, batch_size=8)
    return np.stack([r.anomaly_map for r in results]), np.array([r.score for r in results])


def _figures(result: dict) -> dict:
    at = result["at_threshold"]
    return {
        "metrics": {k: result["metrics"][k] for k in KEYS},
        "image_f1": at["image"]["f1"],
        "pixel_f1": at["pixel"]["f1"],
        "ms_per_image": result["inference_ms_per_image"],
    }


def check_run(run: Path, data: Path, device: str, precisions: list[str], images: int) -> dict:
    """The CPU's float32 figures of ``run`` on ``data`` and, per precision, ``device``'s with their differences."""
    files = images_under(data / "test")[:images]
    cpu = prnad.load(run, device="cpu")
    reference = _figures(cpu.evaluate(data))
    ref_maps, ref_scores = _maps_and_scores(cpu, files)
    ref_decisions = ref_scores > cpu.image_threshold
    rows = {}
    for precision in precisions:
        detector = prnad.load(run, device=device, precision=precision)
        figures = _figures(detector.evaluate(data))
        maps, scores = _maps_and_scores(detector, files)
        figures["max_metric_diff_points"] = max(abs(figures["metrics"][k] - reference["metrics"][k]) for k in KEYS)
        figures["max_map_diff"] = float(np.abs(maps - ref_maps).max())
        figures["max_score_diff"] = float(np.abs(scores - ref_scores).max())
        figures["decisions_changed"] = int(((scores > detector.image_threshold) != ref_decisions).sum())
        rows[precision] = figures
        print(json.dumps({"run": str(run), "precision": precision, **figures}), flush=True)
    return {"cpu_fp32": reference, "device": rows, "images_compared": len(files)}


def write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"# The GPU path against the CPU ({data['device']}, {data['date']})",
        "",
        f"Command: `{data['command']}`",
        "",
        "Each run evaluated on the CPU in float32 and on the device per precision (metrics in percent, image AUROC /",
        f"pixel AUROC / PRO / pixel AP; F1 at the run's thresholds); map and score differences over {data['images']}",
        "test images; decisions changed: images whose decision differs from the CPU's.",
        "",
        "| run | where | image AUROC / pixel AUROC / PRO / pixel AP | image F1 / pixel F1 | ms/image | max metric diff | "
        "max map diff | max score diff | decisions changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, r in data["runs"].items():
        for where, f in [("cpu fp32", r["cpu_fp32"]), *((f"{data['device']} {p}", f) for p, f in r["device"].items())]:
            m = " / ".join(f"{f['metrics'][k]:.2f}" for k in KEYS)
            diffs = (
                f"{f['max_metric_diff_points']:.3f} | {f['max_map_diff']:.2e} | {f['max_score_diff']:.2e} | "
                f"{f['decisions_changed']}"
                if "max_map_diff" in f
                else "| | |"
            )
            lines.append(
                f"| {run} | {where} | {m} | {f['image_f1']:.1f} / {f['pixel_f1']:.1f} | {f['ms_per_image']:.2f} | "
                f"{diffs} |"
            )
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    a = sub.add_parser("pack", help="put runs, the test split at their size and weights into a folder to carry")
    a.add_argument("--runs", nargs="+", required=True, type=Path)
    a.add_argument("--data", type=Path, default=REPO.parent / "shared/data/mvtec_ad/bottle")
    a.add_argument("--weights", type=Path, default=REPO.parent / "shared/weights/mobilenet_v2_imagenet.pth")
    a.add_argument("--out", type=Path, default=REPO / "device_data")
    c = sub.add_parser("check", help="evaluate runs on the CPU and on --device, per precision")
    c.add_argument("--runs", nargs="+", required=True, type=Path)
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--device", default="cuda")
    c.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], choices=list(PRECISIONS))
    c.add_argument("--images", type=int, default=16, help="test images whose maps and scores are compared")
    c.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    c.add_argument("--name", default="gpu_check")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    if args.verb == "pack":
        packed = pack(args.runs, args.data, args.weights if args.weights.is_file() else None, args.out)
        print(json.dumps(packed, indent=2))
        return packed
    device = resolve_device(args.device)
    data = {
        "device": device_name(device),
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "images": args.images,
        "runs": {str(r): check_run(r, args.data, args.device, args.precisions, args.images) for r in args.runs},
    }
    write(args.results, args.name, data)
    return data


if __name__ == "__main__":
    main()
