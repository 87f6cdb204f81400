"""Benchmark: peak memory of fitting the prototypes (encode every normal image, then K-means per scale).

    python benchmarks/memory.py --backbones resnet18 wide_resnet50_2 mobilenet_v2 --images 391

Memory depends on shapes, not on weight or pixel values, so random weights and random images stand in.
Each (backbone, code path) runs in a fresh subprocess on the CPU, which reports its resident memory just
before fitting and its peak (``ru_maxrss``) after: the difference is what fitting costs. ``before`` is the
code path of commit c2884df, reproduced below (batches kept in lists then concatenated, K-means on a float64
copy of the whole (N, D) matrix); ``after`` is :func:`prnad.fitting.compute_prototypes`. Both use the
config's K-means defaults and seed 0; the last column compares the two paths' prototypes. Writes
``benchmarks/results/memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from prnad.config import EncoderConfig, ModelConfig
from prnad.fitting import compute_prototypes
from prnad.model import build_encoder
from prnad.model.prototypes import kmeans, prototype_count
from prnad.utils import device_name

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MIB = 2**20


# ------------------------------------------------------------------------------------------------ the old path


@torch.no_grad()
def _before_encode_all(encoder, images: np.ndarray, device, batch_size: int) -> list[torch.Tensor]:
    per_scale: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float().div(255)
        for i, f in enumerate(encoder(batch.to(device), stages=3)):
            per_scale[i].append(f.cpu())
    return [torch.cat(maps) for maps in per_scale]


def _before_kmeans(x: torch.Tensor, k: int, *, restarts: int, iterations: int, generator) -> torch.Tensor:
    """K-means as it was: the whole (N, D) matrix converted to float64 at once (one column chunk of width D)."""
    return kmeans(x, k, restarts=restarts, iterations=iterations, generator=generator, chunk_columns=x.shape[1])


def before_compute_prototypes(
    encoder, normals, *, ratio, restarts, iterations, seed, device, batch_size=16
) -> list[torch.Tensor]:
    """``prnad.training.trainer.compute_prototypes`` as of commit c2884df."""
    generator = torch.Generator().manual_seed(seed)
    k = prototype_count(len(normals), ratio)
    prototypes = []
    for maps in _before_encode_all(encoder, normals, device, batch_size):
        centres = _before_kmeans(maps.flatten(1), k, restarts=restarts, iterations=iterations, generator=generator)
        prototypes.append(centres.view(k, *maps.shape[1:]))
    return prototypes


# ------------------------------------------------------------------------------------------------ one measurement


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_child(backbone: str, path: str, n_images: int, size: int, batch_size: int, save: str) -> dict:
    """Fit prototypes once along ``path``, save them to ``save`` and return the memory it took.

    Run in a fresh process, so that the peak belongs to this fit alone.
    """
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(backbone=backbone, weights="random"))
    images = np.random.default_rng(0).integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    with torch.no_grad():  # load kernels and thread pools before the baseline
        shapes = [tuple(f.shape[1:]) for f in encoder(torch.rand(1, 3, size, size), stages=3)]
    m = ModelConfig()
    fit = compute_prototypes if path == "after" else before_compute_prototypes
    rss_before, peak_before = _rss_bytes(), _peak_rss_bytes()
    start = time.perf_counter()
    prototypes = fit(
        encoder,
        images,
        ratio=m.prototype_ratio,
        restarts=m.kmeans_restarts,
        iterations=m.kmeans_iterations,
        seed=0,
        device="cpu",
        batch_size=batch_size,
    )
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    save_file({f"scale{i}": p for i, p in enumerate(prototypes)}, save)
    return {
        "backbone": backbone,
        "path": path,
        "feature_shapes": shapes,
        "features_float32_mib": round(n_images * sum(int(np.prod(s)) for s in shapes) * 4 / MIB, 1),
        "rss_before_mib": round(rss_before / MIB, 1),
        "peak_rss_mib": round(peak / MIB, 1),
        "peak_increase_mib": round((peak - rss_before) / MIB, 1),
        "peak_before_fit_mib": round(peak_before / MIB, 1),
        "seconds": round(seconds, 1),
        "prototype_shapes": [tuple(p.shape) for p in prototypes],
    }


def run_child(backbone: str, path: str, args: argparse.Namespace, save: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", backbone, path, "--save", str(save), "--images", str(args.images)]
    cmd += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report


def _max_relative_difference(a: Path, b: Path) -> float:
    """Largest |a - b| over all prototype elements, relative to the largest |a| of the same scale."""
    ta, tb = load_file(str(a)), load_file(str(b))
    return max(float((ta[n] - tb[n]).abs().max() / ta[n].abs().max().clamp_min(1e-30)) for n in ta)


def _markdown(data: dict) -> str:
    lines = [
        "# Peak memory of prototype fitting",
        "",
        f"`{data['command']}`",
        "",
        f"{data['date']}, {data['machine']}, {data['cpu']}, torch {data['torch']}. "
        f"{data['images']} random images at {data['image_size']} px, random weights, batch {data['batch_size']}, "
        f"K-means defaults (ratio {data['kmeans']['ratio']}, {data['kmeans']['restarts']} restarts, "
        f"{data['kmeans']['iterations']} iterations). Whole run: {data['wall_seconds']} s.",
        "",
        "Peak increase = peak RSS during fitting minus RSS just before it, in a fresh process per row. "
        "Features = one float32 copy of the three scales (N x sum C_i H_i W_i), the floor for the after path.",
        "",
        "| backbone | features MiB | before: peak increase MiB | after: peak increase MiB | before s | after s | "
        "prototypes max rel. diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['backbone']} | {a['features_float32_mib']} | {b['peak_increase_mib']} | {a['peak_increase_mib']} | "
            f"{b['seconds']} | {a['seconds']} | {r['prototypes_max_rel_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["resnet18", "wide_resnet50_2", "mobilenet_v2"])
    p.add_argument("--images", type=int, default=391)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--child", nargs=2, metavar=("BACKBONE", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure_child(*args.child, args.images, args.image_size, args.batch_size, args.save)))
        return
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            row = {"backbone": backbone}
            for path in ("before", "after"):
                row[path] = run_child(backbone, path, args, Path(tmp) / f"{path}.safetensors")
                print(
                    f"{backbone:16s} {path:6s} peak +{row[path]['peak_increase_mib']:8.1f} MiB  {row[path]['seconds']} s"
                )
            row["prototypes_max_rel_diff"] = _max_relative_difference(
                Path(tmp) / "before.safetensors", Path(tmp) / "after.safetensors"
            )
            rows.append(row)
    m = ModelConfig()
    data = {
        "command": " ".join(["python benchmarks/memory.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "cpu": f"{device_name(torch.device('cpu'))}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "images": args.images,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "kmeans": {"ratio": m.prototype_ratio, "restarts": m.kmeans_restarts, "iterations": m.kmeans_iterations},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "memory.md").write_text(_markdown(data))
    print(_markdown(data))


if __name__ == "__main__":
    main()
