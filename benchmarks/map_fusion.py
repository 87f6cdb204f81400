"""Benchmark: which maps the fused anomaly map should sum, measured on trained runs (no training).

    python benchmarks/map_fusion.py runs/bench_screw/seed0 runs/bench_bottle/seed0 ...

The default map (``model.score_bank_size`` > 0) sums the z-scores of the decoder's logits (L) and of the two
score banks' distance maps at strides 8 and 16 (8, 16), each standardised over the pixels of the run's
held-out normal images, the stride-16 one at half weight (``model.bank_map_weights``). This script
recomputes those parts, and one more, the norm of the residual to the nearest patch-bank vector at the head's
finest scale (r4: stride 4, or stride 8 for a head without it; what the head's prototype matching already
finds), standardises all of them the same way, and reports pixel AUROC and pixel AP of each candidate sum
(some weight a part: 0.5x16 adds half the stride-16 z-score) on the test split minus the run's seen
anomalies. Some candidates also blur the sum with a Gaussian (sigma in pixels at the model's size, kernel
radius 3 sigma, as ``model.score_smoothing`` does for the score). The standardisation uses held-out normals
only; the choice among candidates is what the test split judges, so a candidate is kept only if it wins on
every category and seed. PRO is not computed (pixel-level only). Results: ``<results>/<name>.json`` and
``.md``. Nothing here is a target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prnad.checkpoint import load_checkpoint
from prnad.config import RunConfig
from prnad.data.mvtec import Sample, load_samples
from prnad.evaluate import held_out_test_set
from prnad.fitting import to_batch
from prnad.metrics import auroc, average_precision
from prnad.model import PRN
from prnad.model.prn import fused_for_inference, gaussian_blur
from prnad.model.prototypes import nearest_patch
from prnad.runs import RunPaths
from prnad.utils import device_name

REPO = Path(__file__).resolve().parents[1]
PARTS = ("L", "8", "16", "r4")
CANDIDATES = {  # name -> ({part: weight in the sum}, Gaussian sigma in px of the sum, 0: none); first: the default
    "L+8+0.5x16 (default)": ({"L": 1.0, "8": 1.0, "16": 0.5}, 0.0),
    "L+8+16 (default before 2026-11-28)": ({"L": 1.0, "8": 1.0, "16": 1.0}, 0.0),
    "L": ({"L": 1.0}, 0.0),
    "L+8": ({"L": 1.0, "8": 1.0}, 0.0),
    "L+16": ({"L": 1.0, "16": 1.0}, 0.0),
    "L+8+0.25x16": ({"L": 1.0, "8": 1.0, "16": 0.25}, 0.0),
    "L+8+16+r4": ({"L": 1.0, "8": 1.0, "16": 1.0, "r4": 1.0}, 0.0),
    "L+8+r4": ({"L": 1.0, "8": 1.0, "r4": 1.0}, 0.0),
    "L+8+0.5x16+0.5xr4": ({"L": 1.0, "8": 1.0, "16": 0.5, "r4": 0.5}, 0.0),
    "L+8+16 blur 2": ({"L": 1.0, "8": 1.0, "16": 1.0}, 2.0),
    "L+8+16 blur 4": ({"L": 1.0, "8": 1.0, "16": 1.0}, 4.0),
    "L+8 blur 4": ({"L": 1.0, "8": 1.0}, 4.0),
}


@torch.inference_mode()
def map_parts(model: PRN, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 4, S, S) float32: L, the bank distances at strides 8 and 16 and r4, at S."""
    infer = fused_for_inference(model).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_batch(images[start : start + batch_size], "cpu")  # (b, 3, S, S)
        logits, maps = infer.decode(x)  # (b, 1, S, S), 2 x (b, 1, H_i, W_i)
        encoded = model.encoder(x, stages=3)
        f = model.head_features(encoded)[0]  # (b, C, S/4, S/4)
        r4 = (f - nearest_patch(f, model.prototypes[0])).norm(dim=1, keepdim=True)  # (b, 1, S/4, S/4)
        r4 = F.interpolate(r4, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        out.append(torch.cat([logits, *infer.upsampled(maps, logits), r4], dim=1).float().numpy())
    return np.concatenate(out)


def measure(run: Path) -> dict:
    """Pixel AUROC and AP of every candidate on ``run``'s test split; its category and seed."""
    ckpt = load_checkpoint(RunPaths(run).model)
    config, root = ckpt.config, Path(ckpt.config.data.root)
    if ckpt.model.n_score_banks == 0 or ckpt.config.model.prototype_match != "patch":
        raise SystemExit(f"{run}: needs a run with patch matching and score banks (the default model)")
    normals = [Sample(root / rel, 0, "good", None) for rel in ckpt.info["calibration_normals"]]
    held, _ = load_samples(normals, config.data.image_size)
    test = held_out_test_set(root, config, ckpt.info, own_data=True)
    images, masks = load_samples(test, config.data.image_size)
    h = map_parts(ckpt.model, held).transpose(1, 0, 2, 3).reshape(len(PARTS), -1)  # (4, N*S*S)
    mean, std = h.mean(1), h.std(1, ddof=1)
    z = (map_parts(ckpt.model, images) - mean[None, :, None, None]) / std[None, :, None, None]  # (M, 4, S, S)
    labels = masks.ravel()
    figures = {}
    for name, (parts, sigma) in CANDIDATES.items():
        fused = sum(w * z[:, PARTS.index(p)] for p, w in parts.items())  # (M, S, S)
        if sigma > 0:
            fused = gaussian_blur(torch.from_numpy(fused)[:, None], sigma)[:, 0].numpy()
        fused = fused.ravel()
        figures[name] = {"pixel_auroc": 100 * auroc(fused, labels), "pixel_ap": 100 * average_precision(fused, labels)}
    return {
        "category": ckpt.info["category"],
        "seed": config.train.seed,
        "model": model_label(config),
        "figures": figures,
    }


def model_label(config: RunConfig) -> str:
    """What sets runs apart beyond their seed: the head's scales, MSA's scales and the training steps."""
    m = config.model
    return f"head {list(m.head_scales)}, MSA {list(m.msa_scales)}, {config.train.iterations} steps"


def _group(run: dict) -> tuple[str, str]:
    """The runs a mean goes over: same category and model (files from before the model label: category only)."""
    return run["category"], run.get("model", "")


def _markdown(data: dict) -> str:
    lines = ["# Which maps the fused map sums (trained runs, no training)", "", f"Command: `{data['command']}`", ""]
    lines += [f"Machine: {data['machine']}, {data['date']}. Pixel AUROC / pixel AP on the test split minus the seen"]
    lines += ["anomalies; parts standardised over the held-out normals' pixels (see the script's docstring).", ""]
    groups = sorted({_group(r) for r in data["runs"].values()})
    lines += ["Means over seeds, per category and model (head scales, MSA scales, training steps):", ""]
    lines += ["| candidate | " + " | ".join(f"{c} ({m})" if m else c for c, m in groups) + " |"]
    lines += ["|---|" + "---|" * len(groups)]
    for name in CANDIDATES:
        cells = []
        for c, m in groups:
            runs = [r for r in data["runs"].values() if _group(r) == (c, m)]
            auc = statistics.fmean(r["figures"][name]["pixel_auroc"] for r in runs)
            ap = statistics.fmean(r["figures"][name]["pixel_ap"] for r in runs)
            cells.append(f"{auc:.2f} / {ap:.2f} (seeds {', '.join(str(r['seed']) for r in runs)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per run:", "", "| run | " + " | ".join(CANDIDATES) + " |", "|---|" + "---|" * len(CANDIDATES)]
    for run, r in data["runs"].items():
        cells = [f"{r['figures'][n]['pixel_auroc']:.2f} / {r['figures'][n]['pixel_ap']:.2f}" for n in CANDIDATES]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="map_fusion")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    data = {
        "command": "python " + shlex.join(["benchmarks/map_fusion.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": device_name(torch.device("cpu")),
        "date": dt.date.today().isoformat(),
        "runs": {},
    }
    for run in args.runs:
        data["runs"][str(run)] = measure(run)
        print(json.dumps({str(run): data["runs"][str(run)]}), flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(data, indent=2))
    (args.results / f"{args.name}.md").write_text(_markdown(data))
    print(_markdown(data))


if __name__ == "__main__":
    main()
