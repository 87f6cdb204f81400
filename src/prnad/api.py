"""The Python API: everything a user can do, in a few functions. The CLI and the benchmarks call these.

``prnad.train(data, out, ...)`` trains and returns a :class:`Detector`; ``prnad.load(run)`` loads one;
``detector.predict(images)`` scores images, ``detector.evaluate(data)`` runs the evaluation protocol.
The examples in :func:`train` and :func:`load` run as doctests on a tiny category made on the spot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prnad.config import PRESETS, ConfigSource, make_config
from prnad.evaluate import format_table
from prnad.experiments import markdown as format_report  # the text of a benchmark report
from prnad.experiments import run_experiment as benchmark  # prnad.benchmark(experiment, out, ...)
from prnad.export import ENGINES, SPIN_MODES  # what load() takes as engine and spin
from prnad.inference import Detector, Prediction
from prnad.predict import predict_to_folder

__all__ = [
    "ENGINES",
    "PRESETS",
    "SPIN_MODES",
    "Detector",
    "Prediction",
    "add_score_banks",
    "benchmark",
    "calibrate",
    "demo",
    "export",
    "format_report",
    "format_table",
    "layout_set",
    "load",
    "make_config",
    "predict_folder",
    "synth_preview",
    "train",
]


def train(
    data: str | Path | None,
    out: str | Path,
    *,
    config: ConfigSource = None,
    preset: str | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Detector:
    """Train PRN on the category folder ``data`` (MVTec AD layout) into the run folder ``out``; returns its Detector.

    ``config``/``preset``/``overrides``/``seed`` as in :func:`make_config` (``data`` None: the config's
    ``data.root``). Presets trade accuracy for speed: ``line`` the fastest, ``balanced`` between it and the
    default (measured with MobileNetV2 in docs/deploying.md).
    A folder that already holds a run is refused unless ``resume`` or ``overwrite``.

    >>> import tempfile, numpy as np, prnad
    >>> from prnad.data import write_tiny_category
    >>> tmp = Path(tempfile.mkdtemp())
    >>> root = write_tiny_category(tmp / "tiny", rng=np.random.default_rng(0), n_train=6)
    >>> fast = {"data": {"image_size": 64, "seen_anomalies": 2}, "model": {"encoder": {"weights": "random"}},
    ...         "train": {"iterations": 2, "batch_size": 4, "num_workers": 0}}
    >>> detector = prnad.train(root, tmp / "run", overrides=fast, seed=0)
    >>> detector.image_size
    64
    >>> import shutil; shutil.rmtree(tmp)
    """
    from prnad.training import train as train_run  # training is imported only by who trains

    run_config = make_config(config, preset=preset, data=data, seed=seed, overrides=overrides)
    if not run_config.data.root:
        from prnad.errors import ConfigError

        raise ConfigError("train: give the category folder (data, or data.root in the config)")
    train_run(run_config, out, resume=resume, overwrite=overwrite, progress=progress)
    return load(out, device=run_config.train.device)


def load(
    run: str | Path, *, device: str = "auto", engine: str = "torch", precision: str = "fp32", spin: str = "off"
) -> Detector:
    """Load a trained run folder once, for ``predict`` and ``evaluate``.

    ``engine``: ``torch`` (default), ``onnxruntime`` or ``openvino`` (CPU; the run's exported graph, made
    into ``<run>/export/`` on first use; needs ``pip install 'prnad[deploy]'``). ``precision``: ``fp32``;
    ``fp16``/``bf16`` autocast with the torch engine (for GPUs); ``bf16`` with openvino (CPUs with bfloat16).
    ``spin``: ONNX Runtime's worker threads ``off`` (default: they sleep whenever they wait) or spinning only
    while a ``run`` is in progress (faster at batch 1, and no core taken between runs).

    >>> import tempfile, numpy as np, prnad
    >>> from prnad.data import write_tiny_category
    >>> tmp = Path(tempfile.mkdtemp())
    >>> root = write_tiny_category(tmp / "tiny", rng=np.random.default_rng(0), n_train=6)
    >>> fast = {"data": {"image_size": 64, "seen_anomalies": 2}, "model": {"encoder": {"weights": "random"}},
    ...         "train": {"iterations": 2, "batch_size": 4, "num_workers": 0}}
    >>> _ = prnad.train(root, tmp / "run", overrides=fast)
    >>> detector = prnad.load(tmp / "run", device="cpu")
    >>> result = detector.predict(root / "test" / "good" / "000.png")
    >>> result.anomaly_map.shape, result.anomaly_map.dtype.name, result.is_anomalous in (True, False)
    ((64, 64), 'float32', True)
    >>> image = np.zeros((30, 50, 3), dtype=np.uint8)
    >>> [r.anomaly_map.shape for r in detector.predict([image, image])]
    [(30, 50), (30, 50)]
    >>> sorted(detector.evaluate()["metrics"])
    ['image_auroc', 'pixel_ap', 'pixel_auroc', 'pro']
    >>> import shutil; shutil.rmtree(tmp)
    """
    return Detector.from_run(run, device=device, engine=engine, precision=precision, spin=spin)


def calibrate(run: str | Path, threshold: dict[str, Any] | None = None, *, device: str = "auto") -> Detector:
    """Refit a trained run's thresholds (and its score standardisation) on its own held-out normals, with the
    ``threshold`` settings changed, e.g. ``{"max_false_alarm_rate": 0.01}`` (a conformal threshold: new normal
    images flagged with probability at most 1 %), ``{"image_criterion": "f1"}`` or
    ``{"pixel_false_alarm_rate": 1e-4}``; the network and score banks stay. Rewrites the run's model file;
    returns its Detector. Needs the run's data folder (``data.root``)."""
    from prnad.training.trainer import recalibrate  # training is imported only by who trains

    recalibrate(run, threshold or {}, device=device)
    return load(run, device=device)


def add_score_banks(
    run: str | Path,
    out: str | Path,
    size: int = 4096,
    *,
    coarse_size: int | None = None,
    map_weights: tuple[float, float] | None = None,
    query_stride: int | None = None,
    device: str = "auto",
) -> Detector:
    """A copy of a finished run in ``out`` with score banks of ``size`` normal vectors per scale (strides 8 and
    16; the stride-16 one of ``coarse_size`` if given) in its score and map, as training with
    ``model.score_bank_size`` would have made them (the banks never enter the loss): e.g. the line preset's run
    made into the balanced preset's without training. ``map_weights`` and ``query_stride`` replace the run's
    ``model.bank_map_weights`` and ``model.bank_query_stride``. Needs the run's data folder; returns the copy's
    Detector."""
    from prnad.training.trainer import with_score_banks  # training is imported only by who trains

    with_score_banks(
        run, out, size, coarse_size=coarse_size, map_weights=map_weights, query_stride=query_stride, device=device
    )
    return load(out, device=device)


def export(run: str | Path, format: str = "onnx") -> Path:
    """Export a run's whole model as one graph, ``onnx`` or ``openvino``, into ``<run>/export/``; its path."""
    return Detector.from_run(run, device="cpu").export(format)


def demo(
    out: str | Path = "prnad_demo",
    *,
    seed: int = 0,
    iterations: int | None = None,
    image_size: int | None = None,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    overwrite: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a small synthetic category under ``out``, train on it, evaluate; returns the evaluation result.

    The demo's run lives in ``out/run``; by default an earlier demo there is replaced.
    """
    from prnad.demo import run_demo

    return run_demo(
        Path(out),
        seed=seed,
        iterations=iterations,
        image_size=image_size,
        device=device,
        overrides=overrides,
        overwrite=overwrite,
        progress=progress,
    )


def synth_preview(
    data: str | Path,
    out: str | Path = "synth.png",
    *,
    textures: str | Path | None = None,
    seed: int = 0,
    seen_anomalies: int = 10,
    image_size: int = 256,
    category_type: str = "auto",
) -> Path:
    """Write one picture of each kind of generated anomaly (EA, HEA, HOA) for the category ``data``."""
    from prnad.synth_preview import write_preview

    return write_preview(
        data,
        out,
        textures=None if textures is None else str(textures),
        seed=seed,
        seen_anomalies=seen_anomalies,
        image_size=image_size,
        category_type=category_type,
    )


def layout_set(data: str | Path, out: str | Path, *, seed: int = 0, per_kind: int | None = None) -> Path:
    """Write an evaluation set of layout anomalies (a part of the object removed, moved or rotated; masks where
    the part should be and where it landed) made from the normal test images of the category ``data``, in the
    MVTec AD layout: ``detector.evaluate(out)`` measures it. Never training data."""
    from prnad.layout_eval import write_layout_set

    return write_layout_set(data, out, seed=seed, per_kind=per_kind)


def predict_folder(
    run: str | Path | Detector,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    batch_size: int = 16,
    threshold: float | None = None,
    pixel_threshold: float | None = None,
) -> Iterator[Prediction]:
    """Score image files and folders with a run, writing into ``out`` (lazily, as the iterator is consumed):
    per image the map (.npy), mask and overlay PNGs; results.csv and results.jsonl with score and decision.

    ``threshold``/``pixel_threshold`` replace the run's fitted thresholds.
    """
    detector = run if isinstance(run, Detector) else load(run)
    return predict_to_folder(
        detector, inputs, out, batch_size=batch_size, threshold=threshold, pixel_threshold=pixel_threshold
    )
