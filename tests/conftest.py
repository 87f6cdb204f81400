"""Shared fixtures: a tiny category in MVTec layout and a config that trains on it in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prnad.config import build_config
from prnad.data import write_tiny_category

SHARED = Path(__file__).resolve().parents[2] / "shared"

torch.set_num_threads(2)

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
