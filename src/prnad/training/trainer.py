"""Training: prototypes once, then a fixed budget of Adam steps over the mixed anomaly stream.

A step reads as: synthesise (in DataLoader workers), the frozen parts (encoder and prototype residuals; once
per unchanged image, :mod:`prnad.training.cache`), the head, loss, update. Periodic checkpoints hold the
optimiser too, so ``resume`` continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from prnad.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from prnad.config import RunConfig, build_config, to_dict, with_absolute_paths
from prnad.data import Category, Sample, file_sha256, held_out_split, load_samples, relative_paths, scan_data
from prnad.errors import ConfigError, DataError, TrainingError
from prnad.fitting import compute_prototypes, compute_score_banks
from prnad.model import PRN, build_encoder, build_prn, prn_loss
from prnad.model.encoder import check_weights_source
from prnad.model.prn import FrozenParts
from prnad.runs import RunPaths
from prnad.synthesis import detect_category_type, foreground_masks, load_textures, procedural_textures
from prnad.training.cache import FeatureCache
from prnad.training.calibration import fit_thresholds, holdout_indices, out_of_sample_normals, standardise_score
from prnad.training.progress import progress as progress_display
from prnad.training.sampler import AnomalyStream, TrainingPool, kind_fractions
from prnad.utils import resolve_device, seed_everything

N_PROCEDURAL_TEXTURES = 64


def build_pool(
    config: RunConfig, category: Category, seen: tuple, rng: np.random.Generator
) -> tuple[TrainingPool, TrainingPool | None, dict[str, Any]]:
    """Load normal images and seen anomalies, estimate foregrounds, get textures.

    Returns the training pool, the calibration pool (the held-out normals with the same seen anomalies and
    textures; None when ``threshold.holdout_fraction`` is 0) and what the run records about its data.
    """
    size = config.data.image_size
    all_normals, _ = load_samples(category.train, size)
    held = holdout_indices(len(all_normals), config.threshold.holdout_fraction, config.train.seed)
    keep = np.setdiff1d(np.arange(len(all_normals)), held)
    normals = all_normals[keep]
    seen_images, seen_masks = load_samples(seen, size)
    category_type = config.data.category_type
    if category_type == "auto":
        category_type = detect_category_type(normals)
    textures = _textures(config, rng)
    pool = TrainingPool(normals, foreground_masks(normals, category_type), seen_images, seen_masks, textures)
    calibration = None
    if len(held):
        held_normals = all_normals[held]
        fg = foreground_masks(held_normals, category_type)
        calibration = TrainingPool(held_normals, fg, seen_images, seen_masks, textures)
    seen_rel = relative_paths(seen, category.root)
    info = {
        "category": category.name,
        "layout": category.layout,
        "category_type": category_type,
        "n_normal": len(normals),
        "calibration_normals": relative_paths([category.train[i] for i in held], category.root),
        "seen_anomalies": seen_rel,
        "seen_defect_types": sorted({s.defect_type for s in seen}),
        "seen_sha256": {rel: file_sha256(s.path) for rel, s in zip(seen_rel, seen, strict=True)},
        "textures": config.data.textures or f"procedural ({N_PROCEDURAL_TEXTURES})",
    }
    return pool, calibration, info


def _textures(config: RunConfig, rng: np.random.Generator) -> np.ndarray:
    """HEA's textures: the config's folder, or procedural ones drawn from ``rng``."""
    if config.data.textures:
        return load_textures(config.data.textures, config.data.image_size)
    return procedural_textures(N_PROCEDURAL_TEXTURES, config.data.image_size, rng)


def calibration_pool(
    config: RunConfig, category: Category, seen: tuple, category_type: str, rng: np.random.Generator
) -> tuple[TrainingPool, list[str]]:
    """The calibration pool of :func:`build_pool` alone (the held-out normals, the seen anomalies, the textures),
    without reading the training images: for a finished run, whose ``category_type`` is recorded. Returns it
    and the held-out normals' paths relative to the category."""
    size = config.data.image_size
    held = holdout_indices(len(category.train), config.threshold.holdout_fraction, config.train.seed)
    samples = [category.train[i] for i in held]
    held_normals, _ = load_samples(samples, size)
    seen_images, seen_masks = load_samples(seen, size)
    fg = foreground_masks(held_normals, category_type)
    pool = TrainingPool(held_normals, fg, seen_images, seen_masks, _textures(config, rng))
    return pool, relative_paths(samples, category.root)


def lr_at(step: int, config: RunConfig) -> float:
    """Linear warm-up, then cosine decay to zero at the end of the budget."""
    t = config.train
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    progress = (step - t.warmup) / max(1, t.iterations - t.warmup)
    return 0.5 * t.lr * (1 + math.cos(math.pi * progress))


def start_fresh(config: RunConfig, pool: TrainingPool, device: torch.device) -> PRN:
    encoder = build_encoder(config.model.encoder).to(device)
    m = config.model
    prototypes = compute_prototypes(
        encoder,
        pool.normals,
        ratio=m.prototype_ratio,
        restarts=m.kmeans_restarts,
        iterations=m.kmeans_iterations,
        seed=config.train.seed,
        device=device,
        bank_size=m.patch_bank_size if m.prototype_match == "patch" else None,
        scales=m.head_scales,
    )
    return build_prn(config.model, prototypes=[p.to(device) for p in prototypes], encoder=encoder).to(device)


def training_loader(pool: TrainingPool, config: RunConfig, start: int) -> torch.utils.data.DataLoader:
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


def training_step(
    model: PRN, optimizer: torch.optim.Optimizer, parts: FrozenParts, masks: torch.Tensor, config: RunConfig
) -> float:
    logits = model.head(parts, masks.shape[-2:])  # (B, 1, S, S): the decoder's map, what the loss trains
    loss = prn_loss(logits, masks, config.loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _load_resume(
    paths: RunPaths, config: RunConfig, device: torch.device, seen: list[str]
) -> tuple[PRN, int, dict | None]:
    """The periodic checkpoint, checked against this config and this data split (by relative path)."""
    if not paths.checkpoint.is_file():
        raise TrainingError(f"{paths.checkpoint}: nothing to resume (no checkpoint in {paths.root})")
    ckpt = load_checkpoint(paths.checkpoint, map_location=device)
    if to_dict(ckpt.config) != to_dict(config):
        raise ConfigError(f"{paths.checkpoint}: the run was started with another config; resume with the same flags")
    recorded = ckpt.info.get("seen_anomalies")
    if recorded is None or sorted(recorded) != sorted(seen):
        raise DataError(
            f"{paths.checkpoint}: the run trained on seen anomalies {recorded}, but {config.data.root} now gives "
            f"{seen} for seed {config.train.seed}: the data changed, so resuming would mix two splits"
        )
    return ckpt.model, ckpt.iteration, ckpt.optimizer_state


def _prepare_run_folder(paths: RunPaths, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; make sure the folder is writable before any long work."""
    if resume and overwrite:
        raise ConfigError("train: --resume and --overwrite exclude each other")
    existing = paths.run_files()
    if existing and not (resume or overwrite):
        names = ", ".join(p.name for p in existing)
        raise TrainingError(
            f"{paths.root}: holds a run already ({names}); continue it with --resume, or replace it with --overwrite"
        )
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        probe = paths.root / f".prnad-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"{paths.root}: cannot write the run folder ({exc.strerror or exc})") from exc
    if overwrite:
        for path in existing:
            path.unlink()


def validated_split(config: RunConfig) -> tuple[Category, tuple[Sample, ...]]:
    """Scan the data and check the protocol split and the batch mix, before any long work."""
    check_weights_source(config.model.encoder)
    category = scan_data(config.data)
    seen, _ = held_out_split(category, config.data.seen_anomalies, config.train.seed, config.data.seen_defect_types)
    kind_fractions(config.synth, len(seen))
    try:
        holdout_indices(len(category.train), config.threshold.holdout_fraction, config.train.seed)
    except ValueError as exc:
        raise DataError(
            f"{category.root / 'train'}: {exc} (set threshold.holdout_fraction 0 to train without thresholds)"
        ) from exc
    return category, seen


def describe(category: Category, seen: tuple[Sample, ...]) -> str:
    """One line: which layout the data was read as, and what training and evaluation get of it."""
    defects = sum(s.label for s in category.test)
    where = "the training split's defect images" if category.train_anomalies else "the test split"
    return (
        f"data: {category.root} read as {category.layout}: {len(category.train)} normal training images, "
        f"{len(seen)} seen anomalies from {where}, {len(category.test)} test images ({defects} defective)"
    )


def train(
    config: RunConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> Path:
    """Train PRN as ``config`` says, writing checkpoints into ``out_dir``; returns the final model's path.

    Everything that can be checked (config, devices, weights file, data layout, split, run folder) is
    checked before the first image is decoded. A folder that holds a run is refused unless ``resume``
    (continue it) or ``overwrite`` (delete its files first, once every check has passed).
    """
    config = with_absolute_paths(config)
    paths = RunPaths(Path(out_dir))
    device = resolve_device(config.train.device)
    category, seen = validated_split(config)
    _prepare_run_folder(paths, resume=resume, overwrite=overwrite)
    if progress:
        print(describe(category, seen), file=sys.stderr, flush=True)
    seed_everything(config.train.seed)
    pool, calibration, info = build_pool(config, category, seen, np.random.default_rng(config.train.seed))
    started = time.perf_counter()
    if resume:
        model, start, optim_state = _load_resume(paths, config, device, info["seen_anomalies"])
    else:
        model, start, optim_state = start_fresh(config, pool, device), 0, None
        paths.config.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    info["setup_seconds"] = round(time.perf_counter() - started, 2)  # prototypes, or loading the checkpoint
    optimizer = torch.optim.Adam(
        model.trainable_parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    if optim_state is not None:
        optimizer.load_state_dict(optim_state)
    _loop(model, optimizer, pool, config, paths, start=start, info=info, device=device, progress=progress)
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    info["resumed_from_iteration"] = start if resume else None
    info["device"] = str(device)
    fit_score_and_thresholds(model, pool, calibration, config, device, info)
    return save_checkpoint(paths.model, model=model, config=config, iteration=config.train.iterations, info=info)


def _load_finished(run_dir: str | Path, purpose: str, device: str) -> tuple[RunPaths, Checkpoint, torch.device]:
    """A finished run's paths, checkpoint (on ``device``) and that device; a DataError naming the model file
    and ``purpose`` when the run has no trained model."""
    paths = RunPaths(Path(run_dir))
    if not paths.model.is_file():
        raise DataError(f"{paths.model}: no trained model to {purpose} in {paths.root}")
    torch_device = resolve_device(device)
    return paths, load_checkpoint(paths.model, map_location=torch_device), torch_device


def _save_finished(paths: RunPaths, ckpt: Checkpoint, config: RunConfig, info: dict[str, Any]) -> Path:
    """Write a refitted finished run (its model with ``config`` and ``info``, and config.yaml) into ``paths``."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return save_checkpoint(paths.model, model=ckpt.model, config=config, iteration=ckpt.iteration, info=info)


def recalibrate(run_dir: str | Path, threshold: dict[str, Any], *, device: str = "auto") -> Path:
    """Refit a finished run's score standardisation and thresholds with the ``threshold`` settings changed
    (``max_false_alarm_rate``, ``pixel_false_alarm_rate``, ``image_criterion``, ``calibration_anomalies``), on
    the same held-out normals; the network, prototypes and score banks stay. Rewrites the run's model file and
    config.yaml; returns the model file. The held-out share cannot change (other normals would be in-sample)."""
    paths, ckpt, torch_device = _load_finished(run_dir, "calibrate", device)
    config = build_config(to_dict(ckpt.config), {"threshold": threshold})
    if config.threshold.holdout_fraction != ckpt.config.threshold.holdout_fraction or not ckpt.info.get("thresholds"):
        raise ConfigError(
            f"{paths.model}: calibration keeps the run's held-out normals (threshold.holdout_fraction "
            f"{ckpt.config.threshold.holdout_fraction}, > 0); train again to hold out another share"
        )
    category, seen = validated_split(config)
    rng = np.random.default_rng(config.train.seed)
    calibration, held = calibration_pool(config, category, seen, ckpt.info["category_type"], rng)
    if (relative_paths(seen, category.root), held) != (ckpt.info["seen_anomalies"], ckpt.info["calibration_normals"]):
        raise DataError(f"{config.data.root}: the data changed since training (other seen anomalies or normals)")
    info = dict(ckpt.info)
    fit_score_and_thresholds(ckpt.model, None, calibration, config, torch_device, info, banks=False)
    return _save_finished(paths, ckpt, config, info)


def with_score_banks(
    run_dir: str | Path,
    out: str | Path,
    size: int,
    *,
    coarse_size: int | None = None,
    map_weights: tuple[float, float] | None = None,
    query_stride: int | None = None,
    device: str = "cpu",
) -> Path:
    """Copy the finished run ``run_dir`` to ``out`` with score banks of ``size`` vectors (the stride-16 one of
    ``coarse_size`` if given), their maps weighted ``map_weights`` in the fused map and queried every
    ``query_stride`` pixels (the run's own where None), standardised and thresholded as training would have done
    it: the banks never enter the loss, so this is the model that training with them gives. Returns the copy's
    model file; the run itself is unchanged."""
    paths, ckpt, torch_device = _load_finished(run_dir, "add score banks to", device)
    m = ckpt.config.model
    weights = tuple(map_weights) if map_weights is not None else m.bank_map_weights
    stride = query_stride or m.bank_query_stride
    model = replace(
        m, score_bank_size=size, coarse_bank_size=coarse_size, bank_map_weights=weights, bank_query_stride=stride
    )
    config = build_config(to_dict(replace(ckpt.config, model=model)))  # checked as any config
    category, seen = validated_split(config)
    pool, calibration, info = build_pool(config, category, seen, np.random.default_rng(config.train.seed))
    if calibration is None or info["seen_anomalies"] != ckpt.info["seen_anomalies"]:
        raise DataError(f"{paths.model}: trained without held-out normals, or on another split; cannot add score banks")
    ckpt.model.bank_map_weights = tuple(float(w) for w in weights)
    ckpt.model.set_bank_query_stride(stride)
    info = {**ckpt.info, "score_bank_added_after_training": True}
    fit_score_and_thresholds(ckpt.model, pool, calibration, config, torch_device, info)
    return _save_finished(RunPaths(Path(out)), ckpt, config, info)


def fit_score_and_thresholds(
    model: PRN,
    pool: TrainingPool | None,
    calibration: TrainingPool | None,
    config: RunConfig,
    device: torch.device,
    info: dict[str, Any],
    *,
    banks: bool = True,
) -> None:
    """After training: with ``model.score_bank_size`` > 0, the score banks (from the trained normals) and their
    standardisation (on the held-out normals); then the thresholds. Neither touches the trained weights (the
    banks only enter the score and the reported map, never the loss), so this also serves a trained model.
    Records both in ``info``, and the seconds the banks took (``score_bank_seconds``). ``banks`` False keeps
    the model's banks (a run being recalibrated; ``pool``, the training images, is then not read)."""
    out_of_sample = None
    if config.model.score_bank_size > 0:
        started = time.perf_counter()
        if banks:
            built = compute_score_banks(
                model.encoder, pool.normals, size=config.model.score_bank_sizes, seed=config.train.seed, device=device
            )
            model.set_score_banks([b.to(device) for b in built])
        info["score_stats"], outputs = standardise_score(model, calibration.normals, device)
        if len(calibration.normals) >= 3:  # each normal standardised on the others: its score out of sample
            out_of_sample = out_of_sample_normals(model, outputs)
        if banks:
            info["score_bank_seconds"] = round(time.perf_counter() - started, 1)
    if calibration is not None:
        info["thresholds"] = fit_thresholds(model, calibration, config, device, out_of_sample)


def _loop(
    model: PRN, optimizer, pool, config: RunConfig, paths: RunPaths, *, start: int, info: dict, device, progress: bool
) -> None:
    t = config.train
    cache = FeatureCache(model, pool.unchanged(), budget_mb=t.feature_cache_mb, device=device)
    info["feature_cache_images"] = len(cache)
    model.train()
    bar = progress_display(t.iterations, initial=start, desc="train", enabled=progress)
    with bar, paths.log.open("a") as log:
        for step, (images, masks, sources) in enumerate(training_loader(pool, config, start), start=start):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            parts = cache.parts(model, images.to(device), sources)
            loss = training_step(model, optimizer, parts, masks.to(device), config)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"iteration {step + 1}: the loss is {loss}; training diverged (try a lower train.lr). "
                    f"{paths.checkpoint} keeps the last checkpoint before it, if any"
                )
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
