"""Training: prototypes once, then a fixed budget of Adam steps over the mixed anomaly stream.

A step reads as: synthesise (in DataLoader workers), forward, loss, update. Periodic checkpoints hold the
optimiser too, so ``resume`` continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from prnad.checkpoint import load_checkpoint, save_checkpoint
from prnad.config import RunConfig, to_dict
from prnad.data import Category, load_samples, scan_category, split_seen_anomalies
from prnad.errors import DataError
from prnad.model import PRN, Encoder, build_encoder, build_prn, prn_loss
from prnad.model.encoder import check_weights_source
from prnad.model.prototypes import kmeans, prototype_count
from prnad.synthesis import detect_category_type, foreground_masks, load_textures, procedural_textures
from prnad.training.sampler import AnomalyStream, TrainingPool
from prnad.utils import resolve_device, seed_everything

CHECKPOINT = "checkpoint.safetensors"  # periodic, with optimiser state
MODEL = "model.safetensors"  # final weights, for evaluation and inference
N_PROCEDURAL_TEXTURES = 64


@dataclass(frozen=True)
class RunPaths:
    """Files of a run folder."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def model(self) -> Path:
        return self.root / MODEL

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "train_log.jsonl"


def build_pool(
    config: RunConfig, category: Category, seen: tuple, rng: np.random.Generator
) -> tuple[TrainingPool, dict[str, Any]]:
    """Load normal images and seen anomalies, estimate foregrounds, get textures."""
    size = config.data.image_size
    normals, _ = load_samples(category.train, size)
    seen_images, seen_masks = load_samples(seen, size)
    category_type = config.data.category_type
    if category_type == "auto":
        category_type = detect_category_type(normals)
    if config.data.textures:
        textures = load_textures(config.data.textures, size)
    else:
        textures = procedural_textures(N_PROCEDURAL_TEXTURES, size, rng)
    pool = TrainingPool(normals, foreground_masks(normals, category_type), seen_images, seen_masks, textures)
    info = {
        "category": category.name,
        "category_type": category_type,
        "n_normal": len(normals),
        "seen_anomalies": [str(s.path.relative_to(category.root)) for s in seen],
        "textures": config.data.textures or f"procedural ({N_PROCEDURAL_TEXTURES})",
    }
    return pool, info


@torch.no_grad()
def encode_all(encoder: Encoder, images: np.ndarray, device: torch.device, batch_size: int = 16) -> list[torch.Tensor]:
    """Encoder maps of every image: (N, S, S, 3) uint8 -> 3 x (N, C_i, H_i, W_i) on the CPU."""
    per_scale: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, len(images), batch_size):
        batch = (
            torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float().div(255)
        )  # (b, 3, S, S)
        for i, f in enumerate(encoder(batch.to(device))[:3]):
            per_scale[i].append(f.cpu())
    return [torch.cat(maps) for maps in per_scale]


def compute_prototypes(
    encoder: Encoder, normals: np.ndarray, config: RunConfig, device: torch.device
) -> list[torch.Tensor]:
    """K-means prototypes per scale over whole normal feature maps: 3 x (K, C_i, H_i, W_i)."""
    generator = torch.Generator().manual_seed(config.train.seed)
    k = prototype_count(len(normals), config.model.prototype_ratio)
    prototypes = []
    for maps in encode_all(encoder, normals, device):
        centres = kmeans(
            maps.flatten(1),
            k,
            restarts=config.model.kmeans_restarts,
            iterations=config.model.kmeans_iterations,
            generator=generator,
        )  # (K, C*H*W)
        prototypes.append(centres.view(k, *maps.shape[1:]))  # (K, C, H, W)
    return prototypes


def lr_at(step: int, config: RunConfig) -> float:
    """Linear warm-up, then cosine decay to zero at the end of the budget."""
    t = config.train
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    progress = (step - t.warmup) / max(1, t.iterations - t.warmup)
    return 0.5 * t.lr * (1 + math.cos(math.pi * progress))


def _start_fresh(config: RunConfig, pool: TrainingPool, device: torch.device) -> PRN:
    encoder = build_encoder(config.model.encoder).to(device)
    prototypes = compute_prototypes(encoder, pool.normals, config, device)
    return build_prn(config.model, prototypes=[p.to(device) for p in prototypes], encoder=encoder).to(device)


def _loader(pool: TrainingPool, config: RunConfig, start: int) -> torch.utils.data.DataLoader:
    t = config.train
    stream = AnomalyStream(
        pool,
        config.synth,
        seed=t.seed,
        batch_size=t.batch_size,
        start=start * t.batch_size,
        stop=t.iterations * t.batch_size,
    )
    return torch.utils.data.DataLoader(
        stream,
        batch_size=t.batch_size,
        shuffle=False,
        num_workers=t.num_workers,
        worker_init_fn=_worker_init,
        persistent_workers=False,
        prefetch_factor=4 if t.num_workers else None,
    )


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # synthesis is NumPy/PIL work; leave the cores to the training step


def _step(
    model: PRN, optimizer: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor, config: RunConfig
) -> float:
    output = model(images)
    loss = prn_loss(output.logits, masks, config.loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _load_resume(paths: RunPaths, config: RunConfig, device: torch.device) -> tuple[PRN, int, dict | None]:
    if not paths.checkpoint.is_file():
        raise DataError(f"{paths.checkpoint}: nothing to resume (no checkpoint in {paths.root})")
    ckpt = load_checkpoint(paths.checkpoint, map_location=device)
    if to_dict(ckpt.config) != to_dict(config):
        raise DataError(f"{paths.checkpoint}: the run was started with another config; resume with the same flags")
    return ckpt.model, ckpt.iteration, ckpt.optimizer_state


def train(config: RunConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train PRN as ``config`` says, writing checkpoints into ``out_dir``; returns the final model's path."""
    paths = RunPaths(Path(out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device)
    check_weights_source(config.model.encoder)
    category = scan_category(config.data.root)
    seen, _ = split_seen_anomalies(category.test, config.data.seen_anomalies, config.train.seed)
    pool, info = build_pool(config, category, seen, np.random.default_rng(config.train.seed))
    started = time.perf_counter()
    if resume:
        model, start, optim_state = _load_resume(paths, config, device)
    else:
        model, start, optim_state = _start_fresh(config, pool, device), 0, None
        paths.config.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    info["prototype_seconds"] = round(time.perf_counter() - started, 2)
    optimizer = torch.optim.Adam(
        model.trainable_parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    if optim_state is not None:
        optimizer.load_state_dict(optim_state)
    _loop(model, optimizer, pool, config, paths, start=start, info=info, device=device, progress=progress)
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    info["device"] = str(device)
    return save_checkpoint(paths.model, model=model, config=config, iteration=config.train.iterations, info=info)


def _loop(
    model: PRN, optimizer, pool, config: RunConfig, paths: RunPaths, *, start: int, info: dict, device, progress: bool
) -> None:
    model.train()
    t = config.train
    bar = tqdm(total=t.iterations, initial=start, disable=not progress, desc="train", unit="it", dynamic_ncols=True)
    with bar, paths.log.open("a") as log:
        for step, (images, masks) in enumerate(_loader(pool, config, start), start=start):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            loss = _step(model, optimizer, images.to(device), masks.to(device), config)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            bar.update(1)
            if (step + 1) % 10 == 0 or step + 1 == t.iterations:
                log.write(json.dumps({"iteration": step + 1, "loss": round(loss, 6)}) + "\n")
                log.flush()
            if (step + 1) % t.checkpoint_every == 0 or step + 1 == t.iterations:
                save_checkpoint(
                    paths.checkpoint, model=model, config=config, iteration=step + 1, info=info, optimizer=optimizer
                )
    model.eval()
