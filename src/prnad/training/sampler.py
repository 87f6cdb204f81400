"""The training stream: normal images, seen anomalies, and generated anomalies, mixed per batch.

Sample ``i`` of the stream is a pure function of (seed, i): its generator is seeded with both, so a run
is reproducible, DataLoader workers never repeat each other, and a resumed run sees exactly the samples
it would have seen. Kinds are laid out per batch by systematic sampling: position p of batch b takes the
kind whose cumulative share covers (u_b + p) / B, with u_b ~ U[0, 1) drawn from (seed, b). Every kind then
occurs with exactly its configured share in expectation at any batch size B, and in every batch it gets
floor or ceil of B times its share (by default at B = 16: 8 normal, 2 seen, 2 EA, 2 HEA, 2 HOA, always).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prnad.config import SynthConfig
from prnad.errors import ConfigError
from prnad.synthesis import extended_anomaly, heterologous_anomaly, homologous_anomaly

KINDS = ("normal", "seen", "ea", "hea", "hoa")
_OFFSET_STREAM = 1  # third seed word: batch offsets never share a generator with a sample


@dataclass(frozen=True)
class TrainingPool:
    """Everything samples are drawn from, all at the training resolution S.

    normals (N, S, S, 3) uint8; foreground (N, S, S) bool, where target areas may lie;
    seen_images (M, S, S, 3) uint8 and seen_masks (M, S, S) bool; textures (T, S, S, 3) uint8.
    """

    normals: np.ndarray
    foreground: np.ndarray
    seen_images: np.ndarray
    seen_masks: np.ndarray
    textures: np.ndarray

    def unchanged(self) -> np.ndarray:
        """(N + M, S, S, 3) uint8: the images the stream serves as they are, the normals then the seen
        anomalies (the place :meth:`AnomalyStream.sample_with_source` reports)."""
        return np.concatenate([self.normals, self.seen_images])


def kind_fractions(config: SynthConfig, n_seen: int) -> dict[str, float]:
    """Fraction of each kind in a batch; seen and EA drop out (weights renormalised) without seen anomalies."""
    weights = {"seen": config.seen_weight, "ea": config.ea_weight, "hea": config.hea_weight, "hoa": config.hoa_weight}
    if n_seen == 0:
        weights["seen"] = weights["ea"] = 0.0
    total = sum(weights.values())
    if total == 0:
        raise ConfigError(
            "config keys 'synth.hea_weight', 'synth.hoa_weight': with 0 seen anomalies no anomaly kind is left; "
            "set one of them > 0"
        )
    anomalous = 1.0 - config.normal_fraction
    fractions = {"normal": config.normal_fraction}
    fractions.update({k: anomalous * w / total for k, w in weights.items()})
    return fractions


def batch_kinds(fractions: dict[str, float], batch_size: int, offset: float) -> tuple[str, ...]:
    """The kind at each batch position by systematic sampling: position p takes the kind whose share interval
    [e_(k-1), e_k) of the cumulative shares covers (offset + p) / B, for ``offset`` in [0, 1)."""
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"offset must be in [0, 1), got {offset}")
    edges = np.cumsum([fractions[k] for k in KINDS])
    positions = (offset + np.arange(batch_size)) / batch_size
    index = np.minimum(np.searchsorted(edges, positions, side="right"), len(KINDS) - 1)
    return tuple(KINDS[i] for i in index)


def batch_offset(seed: int, batch: int) -> float:
    """u_b of batch ``batch``: its own generator, apart from the samples' (seed, i) generators."""
    return float(np.random.default_rng([seed, batch, _OFFSET_STREAM]).random())


class AnomalyStream(torch.utils.data.Dataset):
    """Samples ``start .. stop-1`` of the stream. Item: image (3, S, S) float in [0, 1], mask (1, S, S) float,
    and the image's place in :meth:`TrainingPool.unchanged` (-1 for a made anomaly)."""

    def __init__(
        self, pool: TrainingPool, config: SynthConfig, *, seed: int, batch_size: int, start: int, stop: int
    ) -> None:
        self.pool, self.config, self.seed = pool, config, seed
        self.start, self.stop, self.batch_size = start, stop, batch_size
        self.fractions = kind_fractions(config, len(pool.seen_images))

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i = self.start + index
        batch, position = divmod(i, self.batch_size)
        kind = self.kind_at(batch, position)
        image, mask, source = self.sample_with_source(kind, np.random.default_rng([self.seed, i]))
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)  # (3, S, S)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).float()[None]  # (1, S, S)
        return image_t, mask_t, source

    def kind_at(self, batch: int, position: int) -> str:
        """The kind of sample ``position`` of batch ``batch`` (a pure function of seed and batch)."""
        return batch_kinds(self.fractions, self.batch_size, batch_offset(self.seed, batch))[position]

    def sample(self, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One (image (S, S, 3) uint8, mask (S, S) bool) of ``kind``."""
        image, mask, _ = self.sample_with_source(kind, rng)
        return image, mask

    def sample_with_source(self, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`sample`, and the image's place in :meth:`TrainingPool.unchanged` when the sample is one of
        those images as it is (a normal image or a raw seen anomaly), else -1."""
        pool, n = self.pool, len(self.pool.normals)
        idx = int(rng.integers(n))
        normal, allowed = pool.normals[idx], pool.foreground[idx]
        if kind == "normal":
            return normal, np.zeros(normal.shape[:2], dtype=bool), idx
        if kind in ("seen", "ea"):
            j = int(rng.integers(len(pool.seen_images)))
            if kind == "seen":
                return pool.seen_images[j], pool.seen_masks[j], n + j
            made = extended_anomaly(
                normal, pool.seen_images[j], pool.seen_masks[j], rng, allowed=allowed, config=self.config
            )
        elif kind == "hea":
            texture = pool.textures[int(rng.integers(len(pool.textures)))]
            made = heterologous_anomaly(normal, texture, rng, allowed=allowed, config=self.config)
        else:
            other = pool.normals[int(rng.integers(n))]
            made = homologous_anomaly(normal, other, rng, allowed=allowed, config=self.config)
        return *made, -1
