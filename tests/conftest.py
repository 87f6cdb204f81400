"""Shared fixtures: a tiny category in MVTec layout and a config that trains on it in seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prnad.config import build_config
from prnad.data import write_tiny_category

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Two threads unless OMP_NUM_THREADS says otherwise: CI also runs with OMP_NUM_THREADS=1, which changes the order of
# float32 sums, so that a tolerance that holds on one thread count only fails here rather than on a user's machine.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))

# CLI flags that make `prnad train` take seconds on the tiny category
FAST_TRAIN = [
    "--image-size",
    "64",
    "--iterations",
    "2",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--backbone-weights",
    "random",
]


@pytest.fixture(scope="session")
def tiny_category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 px category: 10 train images, 3 good test images, 2 defect types x 3 images."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    return write_tiny_category(root, rng=np.random.default_rng(0), size=64, n_train=10, n_good_test=3)


def tiny_overrides(root: Path, **train: object) -> dict:
    """Config values for a seconds-long run: 64 px, random ResNet18, 2 seen anomalies, 4 steps of 4 images."""
    return {
        "data": {"root": str(root), "image_size": 64, "seen_anomalies": 2},
        "model": {"encoder": {"weights": "random"}, "kmeans_restarts": 1, "decoder_channels": [16, 16, 8]},
        "train": {"iterations": 4, "batch_size": 4, "num_workers": 0, "checkpoint_every": 2, **train},
    }


@pytest.fixture()
def textures(tmp_path: Path) -> Path:
    """A folder of two small random texture images."""
    folder = tmp_path / "textures"
    folder.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"t{i}.jpg")
    return folder


@pytest.fixture()
def tiny_config(tiny_category: Path):
    return build_config(tiny_overrides(tiny_category))


def without_model_key(checkpoint: Path, key: str, out: Path) -> Path:
    """A copy of ``checkpoint`` at ``out`` whose stored config lacks ``model.<key>``: a checkpoint as written
    before that key existed."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(checkpoint, "pt") as f:
        header = f.metadata()
    stored = json.loads(header["config"])
    del stored["model"][key]
    save_file(load_file(checkpoint), out, metadata={**header, "config": json.dumps(stored)})
    return out


# Float32 rounding of one computed value, after another order of summation (batch size, thread count, instruction
# set, engine): a few tens of ulps of its size (2e-6 = 17 float32 epsilons), far above what such changes give and
# far below what a changed computation gives.
FLOAT32_SUM_NOISE = 2e-6


def score_tolerance(detector, score: float) -> float:
    """How far two float32 computations of one image's ``score`` may differ. The score is the top-K mean or,
    with score banks, a sum of z-scores (x_k - mean_k) / std_k of the top-K mean and each bank's largest
    distance: each x_k carries FLOAT32_SUM_NOISE of its size, |x_k| / std_k <= |mean_k| / std_k + |z_k|, and
    the z-scores add up to ``score`` (they share its sign on the images that matter: anomalies). A spread
    std_k far below its mean (the top-K mean of a tiny random model: 0.56 +- 1e-4) makes this large."""
    stats = detector.info.get("score_stats")
    if not stats:
        return FLOAT32_SUM_NOISE * (abs(score) + 1e-6)
    ratio = sum(abs(m) / s for m, s in zip(stats["image_mean"], stats["image_std"], strict=True))
    return FLOAT32_SUM_NOISE * (ratio + abs(score))
