"""Diagnose a trained run: where does the image score go wrong?

    python benchmarks/diagnose.py runs/bench_screw/seed0 --out benchmarks/results/diagnose_screw

Writes into ``--out``:
- ``worst_normal.png`` and ``worst_defective.png``: the normal test images that score highest and the defective
  ones that score lowest; per row the image, its mask, the anomaly map, and the squared prototypical residual
  summed over channels at strides 4, 8 and 16 (each panel scaled to its own maximum; the number is that maximum);
- ``diagnosis.json``: per test image its score, label, type, each scale's distance to its nearest prototype
  (mean squared residual) and how the top-K pixels are spread (the share in the largest connected region), and
  the image AUROC that other image scores would give on the same maps (top-K for several K, the maximum, top-K
  after Gaussian smoothing, and the prototype distance alone). These are a diagnosis, not a choice: a score picked
  by its test-set AUROC here would be tuned on the test set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

import prnad
from prnad.data import load_samples
from prnad.evaluate import held_out_test_set
from prnad.metrics import auroc

PANEL_GAP = 3


@torch.inference_mode()
def forward_parts(detector: prnad.Detector, images: np.ndarray) -> dict[str, np.ndarray]:
    """Logits (N, S, S), residual energy per scale 3 x (N, H_i, W_i), mean squared residual per scale (N, 3)."""
    model = detector.model
    logits, energy, distance = [], [[], [], []], []
    for start in range(0, len(images), 8):
        x = torch.from_numpy(images[start : start + 8]).permute(0, 3, 1, 2).float().div(255)  # (b, 3, S, S)
        x = x.to(detector.device)
        logits.append(model(x).logits[:, 0].float().cpu())
        encoded = model.encoder(x, stages=3)
        residuals = model.residuals(model.head_features(encoded))  # per head scale (b, C_i, H_i, W_i)
        for i, r in enumerate(residuals):
            energy[i].append(r.sum(1).cpu())  # (b, H_i, W_i)
        distance.append(torch.stack([r.flatten(1).mean(1) for r in residuals], 1).cpu())  # (b, 3)
    return {
        "logits": torch.cat(logits).numpy(),
        "energy": [torch.cat(e).numpy() for e in energy],
        "distance": torch.cat(distance).numpy(),
    }


def topk_mean(maps: np.ndarray, k: int) -> np.ndarray:
    """(N, S, S) -> (N,): mean of each map's k largest values."""
    flat = maps.reshape(len(maps), -1)
    return np.sort(flat, axis=1)[:, -k:].mean(1)


def largest_region_share(logits: np.ndarray, k: int) -> np.ndarray:
    """(N, S, S) -> (N,): share of the top-k pixels that lie in the largest 8-connected region of them."""
    shares = []
    for m in logits:
        threshold = np.sort(m.ravel())[-k]
        regions, count = ndimage.label(m >= threshold, structure=np.ones((3, 3)))
        sizes = np.bincount(regions.ravel())[1:] if count else np.array([0])
        shares.append(float(sizes.max() / max(1, sizes.sum())))
    return np.array(shares)


def alternative_scores(logits: np.ndarray, distance: np.ndarray) -> dict[str, np.ndarray]:
    """Image scores other choices would give, from the same maps."""
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    scores = {f"top{k}": topk_mean(probs, k) for k in (1, 10, 100, 1000, 4000)}
    for sigma in (2, 4, 8):
        smooth = np.stack([ndimage.gaussian_filter(p, sigma) for p in probs])
        scores[f"top100_smoothed_sigma{sigma}"] = topk_mean(smooth, 100)
    for i in range(3):
        scores[f"prototype_distance_scale{i}"] = distance[:, i]
    return scores


def _to_rgb(panel: np.ndarray, size: int) -> np.ndarray:
    """A float map scaled to its own max, as a grey uint8 (size, size, 3) panel."""
    scaled = panel / max(float(panel.max()), 1e-12)
    im = Image.fromarray(np.uint8(np.clip(scaled, 0, 1) * 255)).resize((size, size), Image.Resampling.NEAREST)
    return np.repeat(np.asarray(im)[..., None], 3, axis=2)


def _row(image: np.ndarray, mask: np.ndarray, prob: np.ndarray, energies: list[np.ndarray], caption: str) -> np.ndarray:
    size = image.shape[0]
    panels = [image, _to_rgb(mask.astype(np.float32), size), _to_rgb(prob, size)]
    panels += [_to_rgb(e, size) for e in energies]
    gap = np.zeros((size, PANEL_GAP, 3), np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    picture = Image.fromarray(row)
    ImageDraw.Draw(picture).text((4, 4), caption, fill=(255, 255, 0))
    return np.asarray(picture)


def write_picture(path: Path, rows: list[np.ndarray]) -> None:
    gap = np.zeros((PANEL_GAP, rows[0].shape[1], 3), np.uint8)
    Image.fromarray(np.concatenate([p for row in rows for p in (row, gap)][:-1], axis=0)).save(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--data", help="category folder (default: the run's)")
    p.add_argument("--out", required=True)
    p.add_argument("--worst", type=int, default=6, help="images per picture")
    args = p.parse_args(argv)
    detector = prnad.load(args.run)
    root = Path(args.data or detector.config.data.root)
    own = args.data is None
    test = held_out_test_set(root, detector.config, detector.info, own_data=own)
    images, masks = load_samples(test, detector.image_size)
    labels = np.array([s.label for s in test])
    parts = forward_parts(detector, images)
    probs = 1.0 / (1.0 + np.exp(-parts["logits"].astype(np.float64)))
    k = detector.config.model.topk
    scores = topk_mean(probs, k)
    share = largest_region_share(parts["logits"], k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    order = np.argsort(scores)
    worst_normal = [i for i in order[::-1] if labels[i] == 0][: args.worst]
    worst_defect = [i for i in order if labels[i] == 1][: args.worst]
    for name, chosen in (("worst_normal", worst_normal), ("worst_defective", worst_defect)):
        rows = [
            _row(
                images[i],
                masks[i],
                probs[i],
                [e[i] for e in parts["energy"]],
                f"{test[i].defect_type}/{test[i].path.name} score {scores[i]:.3f} "
                f"energy max {', '.join(f'{e[i].max():.3g}' for e in parts['energy'])}",
            )
            for i in chosen
        ]
        write_picture(out / f"{name}.png", rows)
    alternatives = {
        name: round(100 * auroc(s, labels), 2)
        for name, s in alternative_scores(parts["logits"], parts["distance"]).items()
    }
    report = {
        "run": str(args.run),
        "data": str(root),
        "topk": k,
        "image_auroc_by_score": alternatives,
        "largest_region_share_of_topk": {
            "normal_mean": round(float(share[labels == 0].mean()), 3),
            "defective_mean": round(float(share[labels == 1].mean()), 3),
        },
        "images": [
            {
                "path": str(s.path.relative_to(root)),
                "label": int(s.label),
                "score": round(float(scores[i]), 5),
                "prototype_distance": [round(float(d), 6) for d in parts["distance"][i]],
                "topk_largest_region_share": round(float(share[i]), 3),
            }
            for i, s in enumerate(test)
        ],
        "panels": "image | mask | anomaly map | residual energy at stride 4 | 8 | 16 (each scaled to its max)",
    }
    (out / "diagnosis.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("image_auroc_by_score", "largest_region_share_of_topk")}, indent=2))


if __name__ == "__main__":
    main()
