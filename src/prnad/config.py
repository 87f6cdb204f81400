"""Typed configuration: one frozen dataclass per concern, filled from YAML and the CLI.

Every choice the paper leaves open ([C] in PRN_SPEC.md) is a field here, with its default and the reason
beside it, so that it can be measured and changed. Unknown keys and out-of-range values raise
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from prnad.encoders import ENCODERS, INPUT_NORMS
from prnad.errors import ConfigError

BACKBONES = tuple(ENCODERS)  # the encoder table's names (prnad/encoders.py)


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def _check_unit_range(pair: tuple[float, float], key: str, low: float = 0.0, high: float = 1.0) -> None:
    _check(
        len(pair) == 2 and low <= pair[0] <= pair[1] <= high,
        key,
        f"expected [a, b] with {low} <= a <= b <= {high}, got {list(pair)}",
    )


LAYOUTS = ("auto", "mvtec", "mvtec3d", "btad", "dagm", "ksdd2", "visa", "folder")  # prnad.data.layouts


@dataclass(frozen=True)
class DataConfig:
    """Where the category lives and how it is split."""

    root: str = ""  # category folder in the MVTec AD layout
    image_size: int = 256  # the paper's resolution; tests use 64 (must be a multiple of 64 for the 4x4 MSA grid)
    seen_anomalies: int = 10  # "general supervised setting": 10 defect images move from test to train
    # DRA's hard setting: every seen anomaly from these defect types (None: all types pooled, the paper's
    # general setting); evaluation then reports the seen and the unseen types apart
    seen_defect_types: tuple[str, ...] | None = None
    category_type: Literal["auto", "object", "texture"] = "auto"  # where target areas may lie
    textures: str | None = None  # folder of texture images for HEA; None: procedural textures
    # the dataset layout (prnad.data.layouts): auto (recognised by its tree), mvtec, mvtec3d, btad, dagm, ksdd2,
    # visa or folder; the folder layout's sub-folders of root, and its masks and normal test images (optional)
    layout: str = "auto"
    normal_dir: str | None = None
    abnormal_dir: str | None = None
    mask_dir: str | None = None
    normal_test_dir: str | None = None

    def __post_init__(self) -> None:
        _check(
            self.image_size >= 64 and self.image_size % 64 == 0,
            "data.image_size",
            f"must be a positive multiple of 64, got {self.image_size}",
        )
        _check(self.seen_anomalies >= 0, "data.seen_anomalies", f"must be >= 0, got {self.seen_anomalies}")
        _check(
            self.seen_defect_types is None or len(self.seen_defect_types) > 0,
            "data.seen_defect_types",
            "must name at least one defect type, or be null (all types pooled)",
        )
        _check(self.layout in LAYOUTS, "data.layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        _check(
            self.category_type in ("auto", "object", "texture"),
            "data.category_type",
            f"must be auto, object or texture, got {self.category_type!r}",
        )


@dataclass(frozen=True)
class EncoderConfig:
    """The frozen, pretrained feature extractor (an entry of :data:`prnad.encoders.ENCODERS`).

    The input normalisation and padding belong to the weights, so by default they come from the table entry
    of ``backbone``; an explicit value overrides the table. When ``weights`` is a file and either is left to
    the table, the file is checked against the entry (``prnad.model.encoder.resolve_encoder``).
    """

    backbone: str = "resnet18"  # a name in prnad.encoders.ENCODERS
    weights: str = "imagenet"  # "imagenet" (the entry's download, when online), "random", or a file path
    input_norm: Literal["auto", "imagenet", "tf"] = "auto"  # auto: the entry's; tf: [-1, 1] input
    tf_same_padding: bool | None = None  # TensorFlow "SAME" padding for stride-2 convs; None: the entry's
    fold_batchnorm: bool = True  # fold the frozen encoder's BatchNorms into its convs: same maps, faster

    def __post_init__(self) -> None:
        _check(
            self.backbone in BACKBONES,
            "model.encoder.backbone",
            f"must be one of {', '.join(BACKBONES)}, got {self.backbone!r}",
        )
        norms = ("auto", *INPUT_NORMS)
        _check(
            self.input_norm in norms,
            "model.encoder.input_norm",
            f"must be one of {', '.join(norms)}, got {self.input_norm!r}",
        )
        _check(bool(self.weights), "model.encoder.weights", "must be imagenet, random or a file path")
        spec = ENCODERS[self.backbone]
        _check(
            self.weights != "imagenet" or spec.download is not None,
            "model.encoder.weights",
            f"{self.backbone} has no downloadable weights ({spec.weights_source}); pass the file as "
            "model.encoder.weights (--backbone-weights PATH)",
        )


@dataclass(frozen=True)
class ModelConfig:
    """PRN's trainable parts. See PRN_SPEC.md for which numbers the paper fixes."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    prototype_ratio: float = 0.1  # [P] Table 6: 10% of the normal images become prototypes
    kmeans_restarts: int = 4  # k-means++ restarts; the lowest inertia wins
    kmeans_iterations: int = 50  # Lloyd steps per restart (converges well before on 200-400 maps)
    residual: Literal["squared", "absolute", "signed"] = "squared"  # [C] from the figure's residual map
    # [C] the encoder scales (0: stride 4, 1: stride 8, 2: stride 16) the head works on: prototypes, MF1, MSA,
    # MF2 and decoder skips. The default (1, 2) drops stride 4, the costliest resolution of the head on a CPU:
    # the map is decoded at stride 8 and upsampled (a deviation from the spec's three scales, measured on bottle
    # and screw, docs/experiments/2026-12-07-design-history.md). A run of scales ending at 2: (0, 1, 2) (the spec), (1, 2) or (2,).
    head_scales: tuple[int, ...] = (1, 2)
    msa_blocks: int = 2  # [C] stacked MSA blocks per scale
    # [C] the scales (0: stride 4, 1: stride 8, 2: stride 16) that get MSA, among head_scales; the others pass
    # their joint map on unchanged. The default, stride 16 only, is the light head measured in docs/experiments/2026-12-07-design-history.md;
    # (0, 1, 2) is the spec's.
    msa_scales: tuple[int, ...] = (2,)
    msa_grids: tuple[int, ...] = (1, 2, 4)  # [P figure] whole map, 2x2 and 4x4 windows
    msa_max_kv: int = 8  # keys/values of a window are average-pooled to at most this many per side (CPU cost)
    msa_head_dim: int = 64  # heads = max(1, channels // head_dim)
    # at strides 16, 8, 4; a head without stride 4 (head_scales (1, 2)) uses the first two
    decoder_channels: tuple[int, int, int] = (128, 64, 32)
    # [C] True: the decoder starts from the encoder's stride-32 map (the figure's bottom, the spec). False (the
    # default, a deviation measured on bottle and screw over seeds 0-2, docs/experiments/2026-12-07-design-history.md): from the stride-16 fused
    # map alone, and the encoder stops at stride 16: about a fifth less time in OpenVINO, metrics level. With
    # decoder_channels (64, 32, 16) and msa_blocks 1 it is the fast head of docs/experiments/2026-12-07-design-history.md.
    decoder_bottom: bool = False
    # [P] the MF blocks exchange information between scales; false keeps each scale to itself (Table 4's "MF")
    multi_scale_fusion: bool = True
    topk: int = 100  # [C] image score = mean of the top-K pixels of the 256x256 map
    score_smoothing: float = 0.0  # [C] Gaussian sigma (px) on the map before top-K; 0: the spec's plain top-K
    # [C] "map": one nearest prototype per whole map (the spec); "location": per location, the nearest of the
    # K prototypes' vectors there (for parts that rotate or move); "patch" (the default, a deviation from the
    # spec measured on bottle and screw, docs/experiments/2026-12-07-design-history.md): per location, the nearest vector of a memory bank of
    # every normal location (position-free, as PatchCore), ``patch_bank_size`` vectors per scale chosen by
    # greedy coreset; prototype_ratio is unused; "none": no prototypes (every residual is 0: Table 4's "w/o
    # prototypes", the head reads the features alone)
    prototype_match: Literal["map", "location", "patch", "none"] = "patch"
    patch_bank_size: int = 1024  # [C] memory-bank vectors per scale for prototype_match "patch"
    # [C] a deviation from the spec's score and map: with a size M > 0, a memory bank of M locally averaged
    # (3x3) normal feature vectors per scale at strides 8 and 16 (greedy coreset). The image score is the sum
    # of z-scores, standardised on the held-out normal images, of the top-K map score and, per bank, the
    # largest nearest-neighbour distance in the image; the map adds the standardised distance maps, weighted
    # by bank_map_weights, to the decoder's logits (docs/experiments/2026-12-07-design-history.md). 0: the spec's decoder map and top-K score
    # alone. Needs held-out normal images (threshold.holdout_fraction > 0).
    score_bank_size: int = 4096
    # [C] vectors of the stride-16 bank when it should differ from the stride-8 one (None: score_bank_size for
    # both). On the line head the stride-8 bank's size is what holds screw's PRO and the stride-16 one can be a
    # quarter of it for a third less of the banks' time (docs/experiments/2026-12-07-design-history.md, "Score banks on the line preset").
    coarse_bank_size: int | None = None
    # [C] weights of the two banks' standardised distance maps (strides 8, 16) in the fused map; the decoder's
    # own map weighs 1. The coarse stride-16 map at half weight: measured on bottle and screw (seeds 0-2,
    # benchmarks/results/map_fusion_weights.md), it keeps pixel AUROC and gains pixel AP (docs/experiments/2026-12-07-design-history.md).
    # Unused without banks.
    bank_map_weights: tuple[float, float] = (1.0, 0.5)
    # [C] the grid, in input pixels, on which the score banks are queried: 8 queries each bank at every location
    # of its own scale; 16 queries the stride-8 bank at every other location (3x3 averages taken with stride 2),
    # a quarter of its distances, its map upsampled from S/16. Unused without banks.
    bank_query_stride: int = 8

    @property
    def score_bank_sizes(self) -> tuple[int, int]:
        """Vectors of the stride-8 and stride-16 score banks (0, 0 without banks: a coarse size is refused then)."""
        return (self.score_bank_size, self.coarse_bank_size or self.score_bank_size)

    def __post_init__(self) -> None:
        _check(
            0.0 < self.prototype_ratio <= 1.0, "model.prototype_ratio", f"must be in (0, 1], got {self.prototype_ratio}"
        )
        _check(self.kmeans_restarts >= 1, "model.kmeans_restarts", "must be >= 1")
        _check(self.kmeans_iterations >= 1, "model.kmeans_iterations", "must be >= 1")
        _check(
            self.residual in ("squared", "absolute", "signed"),
            "model.residual",
            f"must be squared, absolute or signed, got {self.residual!r}",
        )
        _check(
            self.head_scales in ((0, 1, 2), (1, 2), (2,)),
            "model.head_scales",
            f"must be [0, 1, 2], [1, 2] or [2], got {list(self.head_scales)}",
        )
        _check(self.msa_blocks >= 0, "model.msa_blocks", "must be >= 0")
        _check(
            len(set(self.msa_scales)) == len(self.msa_scales) and all(i in (0, 1, 2) for i in self.msa_scales),
            "model.msa_scales",
            f"must be distinct scale indices among 0, 1, 2; got {list(self.msa_scales)}",
        )
        _check(
            len(self.msa_grids) >= 1 and all(g in (1, 2, 4) for g in self.msa_grids),
            "model.msa_grids",
            f"must be a non-empty list of 1, 2, 4; got {list(self.msa_grids)}",
        )
        _check(self.msa_max_kv >= 1, "model.msa_max_kv", "must be >= 1")
        _check(self.msa_head_dim >= 1, "model.msa_head_dim", "must be >= 1")
        _check(
            len(self.decoder_channels) == 3 and min(self.decoder_channels) >= 1,
            "model.decoder_channels",
            "must be three positive integers",
        )
        _check(self.topk >= 1, "model.topk", "must be >= 1")
        _check(self.score_smoothing >= 0.0, "model.score_smoothing", "must be >= 0")
        _check(
            self.prototype_match in ("map", "location", "patch", "none"),
            "model.prototype_match",
            f"must be map, location, patch or none, got {self.prototype_match!r}",
        )
        _check(self.patch_bank_size >= 1, "model.patch_bank_size", "must be >= 1")
        _check(self.score_bank_size >= 0, "model.score_bank_size", "must be >= 0 (0: the top-K score alone)")
        _check(
            self.coarse_bank_size is None or (self.coarse_bank_size >= 1 and self.score_bank_size > 0),
            "model.coarse_bank_size",
            f"must be >= 1 and needs score banks (model.score_bank_size > 0), got {self.coarse_bank_size}",
        )
        _check(
            len(self.bank_map_weights) == 2 and all(w >= 0 for w in self.bank_map_weights),
            "model.bank_map_weights",
            f"must be two weights >= 0 (strides 8 and 16), got {list(self.bank_map_weights)}",
        )
        _check(
            self.bank_query_stride in (8, 16),
            "model.bank_query_stride",
            f"must be 8 or 16, got {self.bank_query_stride}",
        )


@dataclass(frozen=True)
class SynthConfig:
    """Anomaly generation (PRN section 3.4). A weight of 0 switches a kind off (Table 5 ablations)."""

    normal_fraction: float = 0.5  # [C] half of every batch is normal images
    seen_weight: float = 1.0  # raw seen anomalies; with ea_weight: 1/4 of the batch
    ea_weight: float = 1.0  # extended anomalies
    hea_weight: float = 1.0  # heterologous: Perlin x texture; with hoa_weight: 1/4 of the batch
    hoa_weight: float = 1.0  # homologous: Perlin x augmented normal image
    ea_opacity: tuple[float, float] = (0.0, 0.5)  # beta of eq. 4
    sa_opacity: tuple[float, float] = (0.2, 0.8)  # beta of the HEA/HOA blend
    perlin_threshold: float = 0.5
    perlin_max_exponent: int = 6  # Perlin scales 2^0 .. 2^(max-1)
    target_area_size: tuple[float, float] = (0.15, 0.6)  # target-area extent as a fraction of the image side
    target_areas: bool = True  # [P] simulated masks restricted to a target area; false: the whole mask (Table 5)
    hoa_grid: int = 8  # HOA shuffles an 8x8 grid of patches of the normal image
    max_tries: int = 20  # resampling budget when a mask comes out empty (or too small)
    min_anomaly_fraction: float = 0.0  # [C] smallest simulated anomaly, as a share of the image; 0: any non-empty

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.normal_fraction < 1.0, "synth.normal_fraction", f"must be in [0, 1), got {self.normal_fraction}"
        )
        weights = (self.seen_weight, self.ea_weight, self.hea_weight, self.hoa_weight)
        _check(min(weights) >= 0.0, "synth", "anomaly weights must be >= 0")
        _check(sum(weights) > 0.0, "synth", "at least one anomaly kind needs a positive weight")
        _check_unit_range(self.ea_opacity, "synth.ea_opacity")
        _check_unit_range(self.sa_opacity, "synth.sa_opacity")
        _check_unit_range(self.target_area_size, "synth.target_area_size")
        _check(0.0 < self.perlin_threshold < 1.0, "synth.perlin_threshold", "must be in (0, 1)")
        _check(1 <= self.perlin_max_exponent <= 8, "synth.perlin_max_exponent", "must be in [1, 8]")
        _check(self.hoa_grid >= 1, "synth.hoa_grid", "must be >= 1")
        _check(self.max_tries >= 1, "synth.max_tries", "must be >= 1")
        _check(0.0 <= self.min_anomaly_fraction < 0.5, "synth.min_anomaly_fraction", "must be in [0, 0.5)")


@dataclass(frozen=True)
class LossConfig:
    """L = SmoothL1(Mo, M) + focal_weight * Focal(Mo, M) [P eq. 5]; constants [C] from the author's later code."""

    focal_weight: float = 5.0
    focal_gamma: float = 4.0
    focal_alpha: float = 0.5
    smooth_l1_beta: float = 1.0

    def __post_init__(self) -> None:
        _check(self.focal_weight >= 0.0, "loss.focal_weight", "must be >= 0")
        _check(self.focal_gamma >= 0.0, "loss.focal_gamma", "must be >= 0")
        _check(0.0 <= self.focal_alpha <= 1.0, "loss.focal_alpha", "must be in [0, 1]")
        _check(self.smooth_l1_beta > 0.0, "loss.smooth_l1_beta", "must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Fixed budget, Adam; no model selection on the test set."""

    seed: int = 0
    # a fixed budget (the paper gives none): about 22 min on 2 CPU cores at 256 px with MobileNetV2; past it
    # a longer schedule (3000 steps) gained nothing on bottle or screw (benchmarks/results/ablation.md)
    iterations: int = 2200
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup: int = 50  # linear warm-up steps, then cosine decay to 0 over the budget
    num_workers: int = 1  # DataLoader workers that synthesise anomalies
    # the encoder's and the prototypes' output for the images served unchanged (normals, raw seen anomalies),
    # computed once and kept (prnad/training/cache.py): same training, a step about a third faster on a CPU.
    # Up to this many MiB (about 0.8 per image at 256 px with MobileNetV2); 0: compute them at every step
    feature_cache_mb: int = 2048
    checkpoint_every: int = 250
    device: str = "auto"  # auto: cuda when available, else cpu

    def __post_init__(self) -> None:
        _check(self.iterations >= 1, "train.iterations", f"must be >= 1, got {self.iterations}")
        _check(self.batch_size >= 2, "train.batch_size", f"must be >= 2 (BatchNorm), got {self.batch_size}")
        _check(self.lr > 0.0, "train.lr", "must be > 0")
        _check(self.weight_decay >= 0.0, "train.weight_decay", "must be >= 0")
        _check(self.warmup >= 0, "train.warmup", "must be >= 0")
        _check(self.num_workers >= 0, "train.num_workers", "must be >= 0")
        _check(self.feature_cache_mb >= 0, "train.feature_cache_mb", "must be >= 0 (0: no cache)")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
        _check(_is_device_name(self.device), "train.device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")


def _is_device_name(name: str) -> bool:
    """auto, cpu, mps, cuda or cuda:N (whether the device is present is checked when it is used)."""
    if name in ("auto", "cpu", "mps", "cuda"):
        return True
    kind, _, index = name.partition(":")
    return kind == "cuda" and index.isdigit()


@dataclass(frozen=True)
class ThresholdConfig:
    """Decision thresholds, fitted after training on data the test split never contributes to [C].

    A share of the normal training images is kept apart (neither prototypes nor training see them); the
    thresholds are fitted on them and on simulated anomalies (EA, HEA, HOA at their training shares) made
    from them. Image threshold: with ``max_false_alarm_rate`` (the default, 0.1) the conformal threshold: a
    new normal image is flagged with probability at most that rate, judged on the held-out normals scored out
    of sample (with score banks, each standardised on the others); with None, ``image_criterion`` on that set
    (``balanced``: the highest TPR - FPR, which does not depend on how many anomalies per normal the set holds;
    ``f1``: the highest F1). The run records what its image threshold promises (expected false-alarm rate and
    a 90 % bound). Pixel threshold: the lowest that flags at most ``pixel_false_alarm_rate`` of the held-out normals' pixels, or,
    with None, the F1-optimal one over the pixels of the whole set. (F1 on the simulated anomalies sets it
    too high once score banks enter the map: the anomalies made from the seen defects, which the network
    trained on, score far above real unseen defects. See docs/experiments/2026-12-07-design-history.md.)
    """

    holdout_fraction: float = 0.1  # share of the normal training images kept apart; 0: no thresholds
    calibration_anomalies: int = 64  # simulated anomalies made from the held-out normals
    image_criterion: Literal["balanced", "f1"] = "balanced"
    # [C] the image threshold: conformal at this rate (a new normal image flagged with probability at most 0.1),
    # chosen without the test split it is reported on as far as two categories allow: docs/experiments/
    # 2026-12-07-calibration.md. None: image_criterion on held-out normals and simulated anomalies.
    max_false_alarm_rate: float | None = 0.1
    pixel_false_alarm_rate: float | None = 1e-5  # share of held-out normal pixels flagged; None: F1-optimal

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.holdout_fraction < 1.0,
            "threshold.holdout_fraction",
            f"must be in [0, 1), got {self.holdout_fraction}",
        )
        _check(self.calibration_anomalies >= 1, "threshold.calibration_anomalies", "must be >= 1")
        _check(
            self.image_criterion in ("balanced", "f1"),
            "threshold.image_criterion",
            f"must be balanced or f1, got {self.image_criterion!r}",
        )
        rate = self.max_false_alarm_rate
        _check(rate is None or 0.0 < rate < 1.0, "threshold.max_false_alarm_rate", f"must be in (0, 1), got {rate}")
        rate = self.pixel_false_alarm_rate
        _check(rate is None or 0.0 <= rate < 1.0, "threshold.pixel_false_alarm_rate", f"must be in [0, 1), got {rate}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; stored inside every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)

    def __post_init__(self) -> None:
        simulated = self.synth.hea_weight + self.synth.hoa_weight
        _check(
            self.data.seen_anomalies > 0 or simulated > 0,
            "synth.hea_weight",
            "with data.seen_anomalies 0, hea_weight or hoa_weight must be > 0 (no anomaly kind would be left)",
        )
        _check(
            self.model.score_bank_size == 0 or self.threshold.holdout_fraction > 0,
            "model.score_bank_size",
            f"score banks ({self.model.score_bank_size}; the default) need held-out normal images to standardise "
            "the score on: keep threshold.holdout_fraction > 0, or set model.score_bank_size 0 (the spec's top-K "
            "score alone)",
        )


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the field's annotated type, or raise naming the key."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, prefix=key)
    if origin is tuple:
        _check(isinstance(value, list | tuple), key, f"expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0]
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        _check(
            value in typing.get_args(annotation), key, f"must be one of {typing.get_args(annotation)}, got {value!r}"
        )
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            _check(type(None) in typing.get_args(annotation), key, "may not be null")
            return None
        return _coerce(value, next(a for a in typing.get_args(annotation) if a is not type(None)), key)
    if annotation is float:
        _check(isinstance(value, int | float) and not isinstance(value, bool), key, f"expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if annotation is bool:
        _check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if annotation is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': unsupported type {annotation!r}")  # pragma: no cover


def from_dict(cls: type, values: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys raise :class:`ConfigError`."""
    where = prefix or "top level"
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{where}': expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        full = [f"{prefix}.{k}" if prefix else str(k) for k in unknown]
        raise ConfigError(f"unknown config key(s): {', '.join(full)} (known at {where}: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The nested plain-dict form of a config (lists for tuples), as written to YAML and checkpoints."""

    def convert(value: Any) -> Any:
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(dataclasses.asdict(config))


# Named trade-offs of accuracy for speed: config layers over the defaults (the head only; the encoder is the
# config's). Measured with MobileNetV2 (configs/mobilenet_v2_tf.yaml + a preset = configs/<preset>.yaml):
# docs/DESIGN.md, "The lighter line preset" and "Score banks on the line preset".
_LINE_HEAD: dict[str, Any] = {
    "prototype_match": "map",  # the paper's whole-map prototypes: one matmul against ~20 per scale
    "decoder_bottom": False,
    "decoder_channels": [32, 16, 8],
    "msa_blocks": 1,
    "msa_grids": [1],  # one whole-map attention branch
}
# The paper's model as far as PRN_SPEC fixes it (whole-map prototypes, the top-K score without score banks, the
# head at strides 4, 8 and 16 with two MSA blocks of three window sizes at each, the decoder from the encoder's
# stride-32 map). What still differs, and why: MSA pools keys and values to at most 8 x 8 per window
# (msa_max_kv; the whole-map branch at stride 4 would attend 4096 x 4096 tokens) and has no feed-forward layer
# (the figure draws none); 10 % of the normal images are held out to fit the thresholds; the schedule (the
# paper gives none) is the default's.
_PAPER_MODEL: dict[str, Any] = {
    "prototype_match": "map",
    "prototype_ratio": 0.1,
    "residual": "squared",
    "score_bank_size": 0,
    "head_scales": [0, 1, 2],
    "msa_scales": [0, 1, 2],
    "msa_blocks": 2,
    "msa_grids": [1, 2, 4],
    "decoder_bottom": True,
    "decoder_channels": [128, 64, 32],
    "topk": 100,
    "score_smoothing": 0.0,
}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # the most accurate
    "line": {"model": {**_LINE_HEAD, "score_bank_size": 0}},  # the fastest: 8 ms on 2 CPU cores
    "balanced": {"model": {**_LINE_HEAD, "score_bank_size": 4096}},  # the line head with the default's banks
    "paper": {"model": _PAPER_MODEL},  # the paper's model, to see what the default adds over it
}


def preset_layer(name: str | None) -> dict[str, Any]:
    """The config layer of preset ``name`` (None: none); ConfigError naming the presets for an unknown one."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file as a nested dict; errors name the file."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(values).__name__}")
    return values


def build_config(*layers: dict[str, Any]) -> RunConfig:
    """Defaults, then each layer (YAML file, then CLI flags) deep-merged in order."""
    values: dict[str, Any] = {}
    for layer in layers:
        values = merge(values, layer)
    return from_dict(RunConfig, values)


ConfigSource = str | Path | dict | RunConfig | None


def _layer(source: ConfigSource) -> dict[str, Any]:
    """A config source as a nested dict: a YAML path, a dict, a RunConfig, or nothing."""
    if source is None:
        return {}
    if isinstance(source, RunConfig):
        return to_dict(source)
    if isinstance(source, dict):
        return source
    return load_yaml(source)


def make_config(
    config: ConfigSource = None,
    *,
    preset: str | None = None,
    data: str | Path | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults, then ``preset`` (a name of :data:`PRESETS`: ``default``, ``line`` the fastest, ``balanced``),
    then ``config`` (a YAML file, a nested dict or a RunConfig), then ``overrides`` (a nested dict such as
    ``{"train": {"iterations": 300}}``), then ``data`` and ``seed``. Unknown keys or presets raise ConfigError."""
    top: dict[str, Any] = {}
    if data is not None:
        top = merge(top, {"data": {"root": str(data)}})
    if seed is not None:
        top = merge(top, {"train": {"seed": seed}})
    return build_config(preset_layer(preset), _layer(config), overrides or {}, top)


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with its data and texture folders made absolute, so that the run it records can be
    evaluated or resumed from any working directory."""
    data = config.data
    textures = None if data.textures is None else str(Path(data.textures).resolve())
    root = str(Path(data.root).resolve()) if data.root else data.root
    return replace(config, data=replace(data, root=root, textures=textures))
