"""Inference: a trained PRN loaded once, run as pre-process, forward, post-process on any image input.

:class:`Detector` is what :func:`prnad.load` and :func:`prnad.train` return. It never imports training.
Pre-process: RGB, resized to the run's square size S with BILINEAR (as in training). Forward: the
BatchNorm-folded copy of the model. Post-process: the (S, S) map resized back to the input's own size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from prnad.checkpoint import load_checkpoint
from prnad.config import RunConfig
from prnad.data import to_rgb
from prnad.errors import CheckpointError, ConfigError, PrnadError
from prnad.evaluate import check_finite, evaluate_model, write_metrics
from prnad.export import export_run, load_engine
from prnad.model import PRN
from prnad.model.prn import PRNOutput, fused_for_inference
from prnad.runs import RunPaths
from prnad.thresholds import conformal_threshold, false_alarm_promise
from prnad.utils import resolve_device

ImageInput = Union[str, Path, Image.Image, np.ndarray]  # noqa: UP007 (a runtime alias; X | Y needs 3.10 types)


@dataclass(frozen=True)
class Prediction:
    """One image's result.

    score: the image score, higher is more anomalous: the mean of the top-K pixels of the map, or with score
    banks (``model.score_bank_size`` > 0) a sum of z-scores against the held-out normals (about 0 for normal
    images).
    anomaly_map: float32 (H, W) in [0, 1] at the input image's own size. source: the path, or
    ``<image i>`` for an in-memory input. is_anomalous: ``score > image threshold``; mask: bool (H, W),
    ``anomaly_map > pixel threshold`` (both None when the model has no thresholds and none was given).
    error: why this input could not be scored (then score is NaN and the rest None); only set when the
    caller asked to skip bad inputs.
    """

    source: str
    score: float
    anomaly_map: np.ndarray | None = field(repr=False)
    error: str | None = None
    is_anomalous: bool | None = None
    mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the input was scored."""
        return self.error is None


@dataclass(frozen=True)
class _Loaded:
    """A decoded input: uint8 (S, S, 3) at the model's size, and the original (width, height)."""

    source: str
    pixels: np.ndarray
    size_wh: tuple[int, int]


def _source_name(image: ImageInput, index: int) -> str:
    return str(image) if isinstance(image, str | Path) else f"<image {index}>"


def _is_single(images: Any) -> bool:
    """One image (a path, a PIL image or one (H, W[, C]) array) rather than a collection of them."""
    if isinstance(images, str | Path | Image.Image):
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3)


PREDICT_BATCH = 16  # images scored at a time by default; calibration scores the held-out normals in these batches


def check_batch_size(batch_size: int) -> None:
    """ConfigError unless ``batch_size`` is an int >= 1 (0 would score nothing and a negative size fail late)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def engine_device(engine: str, device: str) -> torch.device:
    """The torch device of ``engine``: ``device`` for the torch engine; the CPU for the others (ONNX Runtime and
    OpenVINO run on it), where ``auto`` means the CPU even on a machine with a GPU and an explicit other
    device is refused."""
    if engine == "torch" or device != "auto":
        resolved = resolve_device(device)
        if engine != "torch" and resolved.type != "cpu":
            raise ConfigError(f"engine {engine!r} runs on the CPU; use engine='torch' on {resolved}")
        return resolved
    return torch.device("cpu")


PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}


class ReducedPrecision:
    """The PyTorch model under autocast in float16 or bfloat16 (matmuls and convs in reduced precision); the
    logits and distance maps come back as float32 and the score is computed from them in float64, as in float32."""

    def __init__(self, model: PRN, precision: str, device: torch.device) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        self.model, self.dtype, self.device_type = model, PRECISIONS[precision], device.type
        self.name = f"torch {precision}"

    def eval(self) -> ReducedPrecision:
        return self

    def __call__(self, images: torch.Tensor) -> PRNOutput:
        with torch.autocast(self.device_type, dtype=self.dtype):
            logits, maps = self.model.decode(images)
        return self.model.output(logits.float(), None if maps is None else [m.float() for m in maps])


class Detector:
    """A trained PRN ready for inference: ``predict`` on images, ``evaluate`` on a category folder.

    Build it with :func:`prnad.load` (from a run folder) or :func:`prnad.train`. The model is loaded once,
    folded for inference and kept on ``device``.
    """

    def __init__(
        self,
        model: PRN,
        config: RunConfig,
        *,
        info: dict[str, Any],
        run_dir: Path | None,
        device: str,
        engine: str = "torch",
        precision: str = "fp32",
        spin: str = "off",
    ):
        self.device = engine_device(engine, device)
        self.config = config
        self.info = info
        self.run_dir = run_dir
        self.model = fused_for_inference(model).to(self.device).eval()
        self.engine, self.precision = engine, precision
        model_file = None if run_dir is None else RunPaths(run_dir).model
        self.runner = load_engine(engine, self.model, run_dir, model_file, config.data.image_size, precision, spin)
        if precision != "fp32" and engine == "torch":
            self.runner = ReducedPrecision(self.model, precision, self.device)
        fitted = info.get("thresholds") or {}
        self.image_threshold: float | None = fitted.get("image")
        self.pixel_threshold: float | None = fitted.get("pixel")

    def false_alarm_threshold(self, rate: float) -> float:
        """The image threshold that flags a new normal image with probability at most ``rate`` (conformal, on
        the run's held-out normal images scored out of sample; with n of them, a rate below 1 / (n + 1) cannot
        be promised and gives their largest score: :meth:`false_alarm_promise` says what it promises).

        Uses the calibration scores stored at training, so it needs no data; assign the result to
        ``image_threshold`` to use it.
        """
        if not 0.0 < rate < 1.0:
            raise ConfigError(f"the false-alarm rate must be in (0, 1), got {rate}")
        return conformal_threshold(self._normal_scores("cannot set a false-alarm rate"), rate)

    def false_alarm_promise(self, threshold: float | None = None) -> dict[str, float]:
        """What an image threshold (default: ``image_threshold``) promises on new normal images, from the run's
        held-out normals: ``expected_rate`` of false alarms, and the ``bound`` it stays under with probability
        ``confidence`` (:func:`prnad.thresholds.false_alarm_promise`)."""
        threshold = self.image_threshold if threshold is None else threshold
        normal = self._normal_scores("no threshold to judge")
        if threshold is None:
            raise CheckpointError(f"{self._name}: the run has no image threshold to judge; give one")
        return false_alarm_promise(normal, threshold)

    def _normal_scores(self, why: str) -> np.ndarray:
        """The run's held-out normal scores, stored at calibration; a CheckpointError saying ``why`` without them."""
        normal = (self.info.get("thresholds") or {}).get("normal_scores")
        if not normal:
            raise CheckpointError(f"{self._name}: the run kept no held-out normal images; {why}")
        return np.array(normal)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        device: str = "auto",
        engine: str = "torch",
        precision: str = "fp32",
        spin: str = "off",
    ) -> Detector:
        """Load the final model of a run folder (``model.safetensors``); errors name the file.

        ``engine``: ``torch`` runs the PyTorch model; ``onnxruntime`` and ``openvino`` run its exported graph
        (made into ``<run>/export/`` first when missing or older than the model). ``precision``: ``fp32``;
        ``fp16``/``bf16`` autocast for the PyTorch engine (for GPUs; maps within about 1e-2 of float32);
        ``bf16`` for OpenVINO (matmuls and convolutions in bfloat16 on CPUs that have it). ``spin``: ONNX
        Runtime's worker threads ``off`` (default) or spinning only while a ``run`` is in progress.
        """
        paths = RunPaths(Path(run_dir))
        if not paths.root.is_dir():
            raise CheckpointError(f"{paths.root}: run folder not found")
        if not paths.model.is_file():
            hint = (
                " (training did not finish: resume it with prnad train --resume)" if paths.checkpoint.is_file() else ""
            )
            raise CheckpointError(f"{paths.model}: no trained model in {paths.root}{hint}")
        torch_device = engine_device(engine, device)
        ckpt = load_checkpoint(paths.model, map_location=torch_device)
        return cls(
            ckpt.model,
            ckpt.config,
            info=ckpt.info,
            run_dir=paths.root,
            device=str(torch_device),
            engine=engine,
            precision=precision,
            spin=spin,
        )

    @property
    def _name(self) -> str:
        """How errors name this model: its checkpoint file, when it came from a run folder."""
        return "the model" if self.run_dir is None else str(RunPaths(self.run_dir).model)

    @property
    def image_size(self) -> int:
        """The square side S the model sees."""
        return self.config.data.image_size

    def __repr__(self) -> str:
        enc = self.config.model.encoder
        return (
            f"Detector(run={str(self.run_dir)!r}, backbone={enc.backbone!r}, size={self.image_size}, "
            f"device={self.device}, engine={self.engine!r})"
        )

    # ---------------------------------------------------------------------------------------------- predict

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = PREDICT_BATCH,
        skip_errors: bool = False,
        threshold: float | None = None,
        pixel_threshold: float | None = None,
    ) -> Prediction | list[Prediction] | Iterator[Prediction]:
        """Score images.

        One image (a path, a PIL image or an (H, W, 3) uint8 array) gives one :class:`Prediction`; a list,
        tuple or (N, H, W, 3) array gives a list; any other iterable (a generator, say) gives an iterator
        that reads and scores ``batch_size`` images at a time, so a long stream is never held in memory.
        A bad input raises :class:`~prnad.errors.DataError` naming it, unless ``skip_errors``, when its
        prediction carries the error instead and the others go on. ``threshold`` and ``pixel_threshold``
        replace the run's fitted thresholds (``image_threshold``, ``pixel_threshold``) for this call.
        """
        limits = {"threshold": threshold, "pixel_threshold": pixel_threshold}
        if _is_single(images):
            return next(self.predict_iter([images], batch_size=1, skip_errors=False, **limits))
        stream = self.predict_iter(images, batch_size=batch_size, skip_errors=skip_errors, **limits)
        if isinstance(images, list | tuple | np.ndarray):
            return list(stream)
        return stream

    def predict_iter(
        self,
        images: Iterable[ImageInput],
        *,
        batch_size: int = PREDICT_BATCH,
        skip_errors: bool = False,
        threshold: float | None = None,
        pixel_threshold: float | None = None,
    ) -> Iterator[Prediction]:
        """Lazily score ``images``: read, score and post-process ``batch_size`` at a time, in input order.

        ``batch_size`` is checked at the call, before any image is read (ConfigError below 1)."""
        check_batch_size(batch_size)
        return self._stream(images, batch_size, skip_errors, threshold, pixel_threshold)

    def _stream(
        self,
        images: Iterable[ImageInput],
        batch_size: int,
        skip_errors: bool,
        threshold: float | None,
        pixel_threshold: float | None,
    ) -> Iterator[Prediction]:
        limits = (
            self.image_threshold if threshold is None else threshold,
            self.pixel_threshold if pixel_threshold is None else pixel_threshold,
        )
        iterator, offset = iter(images), 0
        while chunk := list(islice(iterator, batch_size)):
            loaded = [self._load(image, offset + i, skip_errors) for i, image in enumerate(chunk)]
            offset += len(chunk)
            scored = iter(self._score([item for item in loaded if isinstance(item, _Loaded)], *limits))
            yield from (next(scored) if isinstance(item, _Loaded) else item for item in loaded)

    def _load(self, image: ImageInput, index: int, skip_errors: bool) -> _Loaded | Prediction:
        source = _source_name(image, index)
        try:
            pixels, size_wh = to_rgb(image, self.image_size, source)
        except PrnadError as exc:
            if not skip_errors:
                raise
            return Prediction(source=source, score=float("nan"), anomaly_map=None, error=str(exc))
        return _Loaded(source, pixels, size_wh)

    @torch.inference_mode()
    def _score(self, items: list[_Loaded], threshold: float | None, pixel_threshold: float | None) -> list[Prediction]:
        if not items:  # every input of the batch failed to load
            return []
        batch = torch.from_numpy(np.stack([item.pixels for item in items])).to(self.device)  # (B, S, S, 3) uint8
        out = self.runner(batch.permute(0, 3, 1, 2).float().div_(255))  # input (B, 3, S, S) in [0, 1]
        check_finite(out.logits, self._name)
        results = []
        for item, score, amap in zip(items, out.score.tolist(), out.anomaly_map, strict=True):
            w, h = item.size_wh
            resized = F.interpolate(amap[None].float(), size=(h, w), mode="bilinear", align_corners=False)  # (1,1,H,W)
            resized = resized[0, 0].clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)
            results.append(
                Prediction(
                    source=item.source,
                    score=float(score),
                    anomaly_map=resized,
                    is_anomalous=None if threshold is None else bool(score > threshold),
                    mask=None if pixel_threshold is None else resized > pixel_threshold,
                )
            )
        return results

    def export(self, fmt: str = "onnx") -> Path:
        """Export the model as one graph (``onnx`` or ``openvino``) into ``<run>/export/``; returns its path."""
        if self.run_dir is None:
            raise ConfigError("export writes into a run folder: load the model with prnad.load(run)")
        model_file = RunPaths(self.run_dir).model
        return export_run(self._cpu_model(model_file), self.run_dir, model_file, fmt, image_size=self.image_size)

    def _cpu_model(self, model_file: Path) -> PRN:
        """The inference model on the CPU, where the graph is traced and its engines run: this detector's own,
        or, when it lives on another device (a GPU), a copy loaded from the run's model file."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        if all(t.device.type == "cpu" for t in tensors):
            return self.model
        return fused_for_inference(load_checkpoint(model_file, map_location=torch.device("cpu")).model).eval()

    # --------------------------------------------------------------------------------------------- evaluate

    def evaluate(self, data: str | Path | None = None, *, save_maps: str | Path | None = None) -> dict[str, Any]:
        """Evaluate on a category folder's test split minus the run's seen anomalies (default: the run's data).

        The same protocol and numbers as ``prnad evaluate``: image AUROC, pixel AUROC, PRO and pixel AP in
        percent at the run's size, per defect type too, and inference ms per image at batch 1. Writes
        ``metrics.json`` into the run folder and, with ``save_maps``, every map as .npy plus scores.csv.
        At the detector's thresholds (``image_threshold``, ``pixel_threshold``) it adds image precision,
        recall and F1 and pixel F1 under ``at_threshold``.
        """
        result = evaluate_model(
            self.runner,
            self.config,
            self.info,
            device=self.device,
            data=data,
            save_maps=save_maps,
            name=self._name,
            thresholds=(self.image_threshold, self.pixel_threshold),
        )
        if self.run_dir is not None:
            write_metrics(RunPaths(self.run_dir).metrics, result)
        return result
