"""prnad: industrial anomaly detection and localisation with Prototypical Residual Networks (CVPR 2023).

>>> import prnad
>>> sorted(name for name in prnad.__all__ if name[0].islower())
['add_score_banks', 'benchmark', 'calibrate', 'demo', 'export', 'layout_set', 'load', 'make_config', 'predict_folder', 'synth_preview', 'train']
"""

from prnad._version import __version__
from prnad.api import (
    PRESETS,
    Detector,
    Prediction,
    add_score_banks,
    benchmark,
    calibrate,
    demo,
    export,
    layout_set,
    load,
    make_config,
    predict_folder,
    synth_preview,
    train,
)
from prnad.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    InferenceError,
    PrnadError,
    TrainingError,
)

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Detector",
    "ExportError",
    "InferenceError",
    "Prediction",
    "PrnadError",
    "TrainingError",
    "__version__",
    "add_score_banks",
    "benchmark",
    "calibrate",
    "demo",
    "export",
    "layout_set",
    "load",
    "make_config",
    "predict_folder",
    "synth_preview",
    "train",
]
