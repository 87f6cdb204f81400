"""The PRN model: frozen encoder, prototypes, residuals, MF1 x2, MSA, MF2, decoder, top-K score.

Shape letters: B batch, S image side, C_i channels at scale i (strides 4, 8, 16; the head works on
``head_scales`` of them, all three by default), K_i prototypes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from prnad.model.decoder import Decoder
from prnad.model.encoder import Encoder, fold_batchnorm
from prnad.model.fusion import MultiScaleFusion
from prnad.model.prototypes import (
    nearest_distance_map,
    nearest_patch,
    nearest_prototype,
    nearest_prototype_per_location,
    no_prototype,
    residual,
)
from prnad.model.resize import resized, resized_sum

MATCHERS = {
    "map": nearest_prototype,
    "location": nearest_prototype_per_location,
    "patch": nearest_patch,
    "none": no_prototype,
}
SCORE_SCALES = (1, 2)  # the encoder scales (strides 8 and 16) whose memory banks enter the score and the map
# The stages of one forward pass, in order (:meth:`PRN.staged`): what a profiler times part by part
STAGES = (
    "encoder",
    "prototype matching",
    "score banks",
    "MF1 (features + residuals)",
    "MSA",
    "MF2",
    "decoder",
    "upsample + score",
)


def _run_stage(name: str, fn, *args):
    return fn(*args)


@dataclass
class PRNOutput:
    """What PRN returns, in training and in evaluation.

    logits: (B, 1, S, S) pre-sigmoid map; anomaly_map: (B, 1, S, S) float32 sigmoid of it (Mo), in [0, 1];
    score: (B,) float64 image score, the mean of the top-K pixels of Mo, computed from the logits in float64.
    Pixels that anomaly_map shows as exactly 1.0 (logits above about 16.6) still rank apart by their logits.
    decoder_logits: the decoder's own map (what the loss trains); without score banks it is ``logits``.
    With score banks (``model.score_bank_size`` > 0), ``logits`` adds the standardised, weighted distance maps
    to the decoder's (:meth:`PRN.fused_logits`) and the score is the sum of the standardised top-K score of the
    decoder's map and the standardised ``distances`` (:meth:`PRN.combined_score`).
    distances: (B, 2) float32, per score bank (strides 8, 16) the image's largest nearest-neighbour distance;
    None without score banks.
    """

    logits: torch.Tensor
    anomaly_map: torch.Tensor
    score: torch.Tensor
    decoder_logits: torch.Tensor
    distances: torch.Tensor | None = None


@dataclass
class FrozenParts:
    """What PRN's head reads of a batch, none of it trained: per head scale (fine to coarse) the encoder's map
    ``features`` (B, C_i, H_i, W_i) and its ``residuals`` to the nearest prototype (same shapes), and the
    encoder's ``bottom`` map (B, C_4, S/32, S/32), None for a decoder without one."""

    features: list[torch.Tensor]
    residuals: list[torch.Tensor]
    bottom: torch.Tensor | None

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor, in a fixed order (features, residuals, then bottom if any); :meth:`from_tensors`
        inverts it (features and residuals come in equal numbers, so an odd count means a bottom)."""
        return [*self.features, *self.residuals, *([] if self.bottom is None else [self.bottom])]

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor]) -> FrozenParts:
        n = len(tensors) // 2
        bottom = tensors[-1] if len(tensors) % 2 else None
        return cls(features=list(tensors[:n]), residuals=list(tensors[n : 2 * n]), bottom=bottom)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, S, S), got {tuple(images.shape)}")


def topk_score(
    logits: torch.Tensor, k: int, *, smoothing: float = 0.0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Mean of the ``k`` largest pixels of sigmoid(logits) per map, in ``dtype``: (B, 1, S, S) -> (B,).

    sigmoid is increasing, so the ``k`` largest logits are the ``k`` largest pixels of Mo: only those go
    through the sigmoid, in ``dtype``. A float32 sigmoid rounds to exactly 1.0 above a logit of about 16.6, and
    strong images would tie at a score of 1.0; float64 (the default, PyTorch's score) keeps them apart up to a
    logit of about 36.7. The exported graph passes float32, the precision the engines run in.
    With ``smoothing`` > 0, Mo is first blurred by a Gaussian of that sigma (pixels), so that the score
    follows regions rather than single pixels.
    """
    if smoothing > 0:
        smoothed = gaussian_blur(torch.sigmoid(logits.to(dtype)), smoothing)  # (B, 1, S, S)
        flat = smoothed.flatten(1)
        return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(1)
    flat = logits.flatten(1)  # (B, S*S)
    top = flat.topk(min(k, flat.shape[1]), dim=1).values  # (B, k)
    return torch.sigmoid(top.to(dtype)).mean(1)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps, kernel radius 3 sigma, edges replicated; same shape."""
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = torch.nn.functional.pad(maps, (radius, radius, radius, radius), mode="replicate")
    rows = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1))  # (B, 1, H + 2r, W)
    return torch.nn.functional.conv2d(rows, kernel.view(1, 1, -1, 1))  # (B, 1, H, W)


class PRN(nn.Module):
    """Prototypical Residual Network. Input RGB in [0, 1], (B, 3, S, S); output :class:`PRNOutput`."""

    def __init__(
        self,
        *,
        encoder: Encoder,
        prototypes: list[torch.Tensor],
        feature_fusion: MultiScaleFusion,
        residual_fusion: MultiScaleFusion,
        attention: nn.ModuleList,
        output_fusion: MultiScaleFusion,
        decoder: Decoder,
        residual_kind: str,
        topk: int,
        prototype_match: str = "map",
        score_smoothing: float = 0.0,
        score_banks: list[torch.Tensor] | None = None,
        head_scales: tuple[int, ...] = (0, 1, 2),
        bank_map_weights: tuple[float, ...] = (1.0, 0.5),
        bank_query_stride: int = 8,
    ) -> None:
        super().__init__()
        if len(bank_map_weights) != len(SCORE_SCALES):
            raise ValueError(f"expected {len(SCORE_SCALES)} bank map weights, got {len(bank_map_weights)}")
        self.bank_map_weights = tuple(float(w) for w in bank_map_weights)
        if len(prototypes) != len(head_scales):
            raise ValueError(f"expected prototypes for {len(head_scales)} scales, got {len(prototypes)}")
        self.head_scales = tuple(head_scales)
        self.encoder = encoder
        self.set_bank_query_stride(bank_query_stride)
        for i, p in enumerate(prototypes):
            self.register_buffer(f"prototypes_{i}", p.clone())  # (K_i, C_i, H_i, W_i)
        self.feature_fusion = feature_fusion
        self.residual_fusion = residual_fusion
        self.attention = attention
        self.output_fusion = output_fusion
        self.decoder = decoder
        self.residual_kind = residual_kind
        self.topk = topk
        if prototype_match not in MATCHERS:
            raise ValueError(f"prototype_match must be one of {sorted(MATCHERS)}, got {prototype_match!r}")
        self.match = MATCHERS[prototype_match]
        self.score_smoothing = score_smoothing
        self.n_score_banks = 0
        self.set_score_banks(score_banks or [])

    @property
    def prototypes(self) -> list[torch.Tensor]:
        return [getattr(self, f"prototypes_{i}") for i in range(len(self.head_scales))]

    def head_features(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The encoder maps of the head's scales, fine to coarse, from the encoder's first three."""
        return [features[i] for i in self.head_scales]

    def residuals(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per scale, the residual of each map to its nearest prototype; shapes as ``features``."""
        return [
            residual(f, self.match(f, p), self.residual_kind) for f, p in zip(features, self.prototypes, strict=True)
        ]

    def set_score_banks(self, banks: list[torch.Tensor]) -> None:
        """Use ``banks`` (one (M, C_i) tensor per scale of SCORE_SCALES, or none) in the score and the map,
        with statistics reset to (0, 1) until :func:`prnad.training.calibration.standardise_score` sets them."""
        if len(banks) not in (0, len(SCORE_SCALES)):
            raise ValueError(f"expected score banks for {len(SCORE_SCALES)} scales or none, got {len(banks)}")
        for i in range(self.n_score_banks):
            delattr(self, f"score_bank_{i}")
        self.n_score_banks = len(banks)
        for i, bank in enumerate(banks):
            self.register_buffer(f"score_bank_{i}", bank.clone())  # (M, C_i) for the scale SCORE_SCALES[i]
        # Row 0: mean, row 1: standard deviation over held-out normal images, (0, 1) until they are set, of
        # score_stats: the top-K score and each bank's largest distance in an image (image level);
        # map_stats: the decoder's logit and each bank's upsampled distance map (pixel level).
        stats = torch.stack([torch.zeros(1 + len(banks)), torch.ones(1 + len(banks))])  # (2, 1 + n_banks)
        device = self.prototypes_0.device
        self.register_buffer("score_stats", stats.to(device))
        self.register_buffer("map_stats", stats.clone().to(device))

    def set_bank_query_stride(self, stride: int) -> None:
        """Query the score banks on a grid of ``stride`` input pixels (the stride of one of SCORE_SCALES): per bank,
        ``bank_steps`` holds the step between the queried locations of its scale's map (1: every location)."""
        strides = tuple(self.encoder.reductions[i] for i in SCORE_SCALES)  # (8, 16)
        if stride not in strides:
            raise ValueError(f"bank_query_stride must be one of {strides}, got {stride}")
        self.bank_steps = tuple(max(1, stride // s) for s in strides)

    @property
    def score_banks(self) -> list[torch.Tensor]:
        return [getattr(self, f"score_bank_{i}") for i in range(self.n_score_banks)]

    def distance_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Per score bank, the map (B, 1, H_i', W_i') of nearest-neighbour distances of ``features`` (the
        encoder's first three maps) at its scale, taken at every ``bank_steps[i]``-th location (H_i' = H_i /
        step); None without banks."""
        if not self.n_score_banks:
            return None
        triples = zip(SCORE_SCALES, self.score_banks, self.bank_steps, strict=True)
        return [nearest_distance_map(features[i], bank, step) for i, bank, step in triples]

    @staticmethod
    def largest_distances(maps: list[torch.Tensor]) -> torch.Tensor:
        """Per image, each distance map's largest value: n_banks x (B, 1, H_i, W_i) -> (B, n_banks)."""
        return torch.stack([m.flatten(1).amax(1) for m in maps], dim=1)

    def fused_logits(self, logits: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
        """The decoder's ``logits`` (B, 1, S, S) plus the distance ``maps``, upsampled to S, standardised by
        ``map_stats`` and weighted by ``bank_map_weights``, scaled by the logits' own spread on normal pixels:
        (B, 1, S, S) in logits' dtype.

        With z the standardised parts and w_i the weights, this is mean_L + std_L (z_L + sum_i w_i z_i): it
        ranks pixels as the weighted sum of z-scores, and keeps normal pixels where the decoder puts them (far
        below 0, so Mo stays near 0). Upsampling is linear, so sum_i w_i z_i = up(sum of the small maps scaled by
        w_i / std_i) - sum_i w_i mean_i / std_i: one resize of all maps at once (:func:`resized_sum`).
        """
        stats = self.map_stats.to(logits.dtype)  # (2, 1 + n_banks)
        weights = [w / stats[1, i + 1] for i, w in enumerate(self.bank_map_weights)]  # w_i / std_i
        scaled = [w * m.to(logits.dtype) for w, m in zip(weights, maps, strict=True)]  # (B, 1, H_i, W_i)
        offset = sum(w * stats[0, i + 1] for i, w in enumerate(weights))  # sum_i w_i mean_i / std_i
        return logits + stats[1, 0] * (resized_sum(scaled, logits.shape[-2:]) - offset)

    @staticmethod
    def upsampled(maps: list[torch.Tensor], logits: torch.Tensor) -> list[torch.Tensor]:
        """The distance ``maps`` bilinearly resized to the size of ``logits`` (B, 1, S, S), in its dtype."""
        return [resized(m.to(logits.dtype), logits.shape[-2:]) for m in maps]

    def combined_score(self, topk: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """Sum of the z-scores of the top-K score (B,) and the distances (B, n_banks), standardised by
        ``score_stats``, in ``topk``'s dtype: (B,)."""
        parts = torch.cat([topk[:, None], distances.to(topk.dtype)], dim=1)  # (B, 1 + n_banks)
        stats = self.score_stats.to(topk.dtype)  # (2, 1 + n_banks)
        return ((parts - stats[0]) / stats[1]).sum(1)

    def decode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The decoder's logits (B, 1, S, S) and the score banks' distance maps (or None) of ``images``."""
        _check_images(images)
        with torch.no_grad():
            encoded, bottom = self.encoded(images)
            maps = self.distance_maps(encoded)  # n_banks x (B, 1, H_i, W_i) or None
            parts = self._frozen(encoded, bottom)
        return self.head(parts, images.shape[-2:]), maps

    def encode(self, images: torch.Tensor) -> FrozenParts:
        """What the head reads of ``images`` (B, 3, S, S), computed without gradients: the part of PRN that
        training never changes (the encoder, the prototypes), so it can be computed once per image."""
        _check_images(images)
        with torch.no_grad():
            return self._frozen(*self.encoded(images))

    def encoded(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The encoder's first three maps (B, C_i, H_i, W_i) and its stride-32 map (B, C_4, S/32, S/32), which
        is computed only for a decoder that reads it (None otherwise)."""
        if not self.decoder.has_bottom:
            return self.encoder(images, stages=3), None
        *encoded, bottom = self.encoder(images)
        return encoded, bottom

    def _frozen(self, encoded: list[torch.Tensor], bottom: torch.Tensor | None) -> FrozenParts:
        features = self.head_features(encoded)  # one map per head scale
        return FrozenParts(features=features, residuals=self.residuals(features), bottom=bottom)

    def head(self, parts: FrozenParts, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """The trained part: MF1 on features and residuals, MSA, MF2, decoder; logits (B, 1, *size)."""
        fused = self.output_fusion(self.attend(self.fuse_inputs(parts.features, parts.residuals)))
        return self.decoder(parts.bottom, fused, size)

    def fuse_inputs(self, features: list[torch.Tensor], residuals: list[torch.Tensor]) -> list[torch.Tensor]:
        """MF1 on the features and, apart, on the residuals, joined per scale: (B, 2C_i, H_i, W_i) each."""
        fused_f = self.feature_fusion(features)
        fused_r = self.residual_fusion(residuals)
        return [torch.cat([f, r], dim=1) for f, r in zip(fused_f, fused_r, strict=True)]

    def attend(self, joint: list[torch.Tensor]) -> list[torch.Tensor]:
        """MSA at each scale; shapes kept."""
        return [msa(x) for msa, x in zip(self.attention, joint, strict=True)]

    def staged(self, images: torch.Tensor, run_stage=_run_stage) -> PRNOutput:
        """The eval forward pass of ``images`` (B, 3, S, S), each of :data:`STAGES` called as
        ``run_stage(name, fn, *args)`` (a profiler times them); the same output as ``self(images)``."""
        _check_images(images)
        encoded, bottom = run_stage(STAGES[0], self.encoded, images)
        features = self.head_features(encoded)
        residuals = run_stage(STAGES[1], self.residuals, features)
        maps = run_stage(STAGES[2], self.distance_maps, encoded)  # n_banks x (B, 1, h_i, w_i) or None
        joint = run_stage(STAGES[3], self.fuse_inputs, features, residuals)
        attended = run_stage(STAGES[4], self.attend, joint)
        fused = run_stage(STAGES[5], self.output_fusion, attended)
        low = run_stage(STAGES[6], self.decoder.low_res, bottom, fused)  # (B, 1, S/r, S/r)
        return run_stage(STAGES[7], lambda y, m: self.output(resized(y, images.shape[-2:]), m), low, maps)

    def forward(self, images: torch.Tensor) -> PRNOutput:
        return self.output(*self.decode(images))

    def output(self, logits: torch.Tensor, maps: list[torch.Tensor] | None = None) -> PRNOutput:
        """:class:`PRNOutput` of the decoder's ``logits`` (B, 1, S, S) and the banks' distance ``maps``."""
        if (maps is None) != (self.n_score_banks == 0):
            raise ValueError(f"the model has {self.n_score_banks} score banks; the distance maps must match")
        score = topk_score(logits, self.topk, smoothing=self.score_smoothing)  # (B,) float64
        if maps is None:
            return PRNOutput(logits=logits, anomaly_map=torch.sigmoid(logits), score=score, decoder_logits=logits)
        distances = self.largest_distances(maps)  # (B, n_banks)
        fused = self.fused_logits(logits, maps)
        return PRNOutput(
            logits=fused,
            anomaly_map=torch.sigmoid(fused),
            score=self.combined_score(score, distances),
            decoder_logits=logits,
            distances=distances,
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen encoder: what the optimiser sees."""
        return [p for p in self.parameters() if p.requires_grad]


def fused_for_inference(model: PRN) -> PRN:
    """An eval-mode copy of ``model`` with every conv-followed-by-BatchNorm folded: same maps, fewer passes."""
    fused = copy.deepcopy(model).eval()
    fold_batchnorm(fused)
    return fused
