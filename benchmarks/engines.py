"""Benchmark: one trained run evaluated through every engine, and predict on a test folder with a corrupt file.

    python benchmarks/engines.py --run runs/bench_bottle_cpu_patch/seed0

For each engine (torch, onnxruntime, openvino in float32 and bf16): the evaluation protocol's metrics, the
decisions at the run's thresholds, ms per image at batch 1, and the largest difference of its maps to
PyTorch's on the held-out test images. Then ``predict`` on a copy of the category's test folder (every defect type) with one corrupt file
added: what it wrote for each image and what it reported. Writes ``benchmarks/results/engines_<name>.json``
and ``.md``; prints what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

import prnad
from prnad.export import ENGINES
from speed import add_openvino_precisions  # alongside this file

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _maps(detector: prnad.Detector, files: list[Path]) -> np.ndarray:
    return np.stack([p.anomaly_map for p in detector.predict(files, batch_size=8)])


def engine_rows(run: str, files: list[Path], openvino_precisions: tuple[str, ...] = ("fp32",)) -> list[dict]:
    """Per engine (and OpenVINO precision), the metrics, decisions, speed and the largest map difference to
    PyTorch's float32 maps."""
    rows, reference = [], None
    pairs = [(e, "fp32") for e in ENGINES if e != "openvino"] + [("openvino", p) for p in openvino_precisions]
    for engine, precision in pairs:
        detector = prnad.load(run, device="cpu", engine=engine, precision=precision)
        result = detector.evaluate()
        maps = _maps(detector, files)
        reference = maps if reference is None else reference
        rows.append(
            {
                "engine": engine if precision == "fp32" else f"{engine} {precision}",
                "precision": precision,
                "metrics": result["metrics"],
                "at_threshold": result["at_threshold"],
                "inference_ms_per_image": result["inference_ms_per_image"],
                "inference_ms_median": result["inference_ms_median"],
                "max_map_diff_vs_torch": float(np.abs(maps - reference).max()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def predict_check(run: str, test_dir: Path) -> dict:
    """predict on a copy of ``test_dir`` with a corrupt file added; what came out."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "test"
        shutil.copytree(test_dir, data)
        corrupt = sorted(p for p in data.iterdir() if p.is_dir())[0] / "zz_corrupt.png"
        corrupt.write_bytes(b"this is not a PNG")
        out = Path(tmp) / "pred"
        predictions = list(prnad.predict_folder(run, [data], out))
        written = {p.name for p in out.iterdir()}
        ok = [p for p in predictions if p.ok]
        rows = (out / "results.csv").read_text().splitlines()
        complete = sum(
            {f"{n}.npy", f"{n}_mask.png", f"{n}_overlay.png"} <= written
            for n in ("_".join(Path(p.source).relative_to(data).with_suffix("").parts) for p in ok)
        )
        return {
            "inputs": len(predictions),
            "scored": len(ok),
            "failed": [
                {"path": Path(p.source).relative_to(data).as_posix(), "error": p.error} for p in predictions if not p.ok
            ],
            "with_decision": sum(p.is_anomalous is not None for p in ok),
            "flagged": sum(bool(p.is_anomalous) for p in ok),
            "with_map_mask_overlay": complete,
            "results_csv_rows": len(rows) - 1,
        }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--name", default="bottle")
    p.add_argument("--results", default=str(RESULTS))
    add_openvino_precisions(p)
    args = p.parse_args(argv)
    detector = prnad.load(args.run, device="cpu")
    root = Path(detector.config.data.root)
    seen = set(detector.info["seen_anomalies"])
    files = [f for f in sorted((root / "test").rglob("*.png")) if f.relative_to(root).as_posix() not in seen]
    data = {
        "run": args.run,
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/engines.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "thresholds": {k: v for k, v in detector.info.get("thresholds", {}).items() if not k.endswith("_scores")},
        "engines": engine_rows(args.run, files, tuple(args.openvino_precisions)),
        "predict": predict_check(args.run, root / "test"),
    }
    print(json.dumps(data["predict"]))
    write(Path(args.results), args.name, data)
    return data


def write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"engines_{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    t = data["thresholds"]
    lines = [
        f"# One run through every engine ({data['date']})",
        "",
        f"Run: `{data['run']}`. Command: `{data['command']}`",
        f"Thresholds (fitted without the test set): image {t.get('image', float('nan')):.4f} "
        f"({t.get('image_method')}), pixel {t.get('pixel', float('nan')):.4f} ({t.get('pixel_method', 'f1-optimal')}).",
        "",
        "| engine | image AUROC | pixel AUROC | PRO | pixel AP | image P / R / F1 | pixel P / R / F1 | ms/image (b1) "
        "| max map diff to torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["engines"]:
        m, at = r["metrics"], r["at_threshold"] or {}
        i, px = at.get("image", {}), at.get("pixel", {})
        prf = lambda d: " / ".join(f"{d[k]:.1f}" for k in ("precision", "recall", "f1")) if d else "-"  # noqa: E731
        lines.append(
            f"| {r['engine']} | {m['image_auroc']:.2f} | {m['pixel_auroc']:.2f} | {m['pro']:.2f} | {m['pixel_ap']:.2f} "
            f"| {prf(i)} | {prf(px)} | {r['inference_ms_per_image']:.1f} | {r['max_map_diff_vs_torch']:.2e} |"
        )
    pr = data["predict"]
    lines += [
        "",
        f"predict on the test folder plus one corrupt file: {pr['inputs']} inputs, {pr['scored']} scored, "
        f"{pr['with_decision']} with a decision ({pr['flagged']} flagged), {pr['with_map_mask_overlay']} with map, mask "
        f"and overlay written, {pr['results_csv_rows']} rows in results.csv; failed: "
        + "; ".join(f"{f['path']} ({f['error']})" for f in pr["failed"]),
    ]
    (folder / f"engines_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
