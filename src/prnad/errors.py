"""Errors users see. Each names the file or key at fault and what was expected."""


class PrnadError(Exception):
    """Base class of every error prnad raises on purpose."""


class ConfigError(PrnadError, ValueError):
    """A config key is unknown, of the wrong type, or out of range."""


class DataError(PrnadError, ValueError):
    """A data folder has the wrong layout, or an image or mask cannot be used."""


class CheckpointError(PrnadError, ValueError):
    """A checkpoint or weights file is missing, truncated, or does not match."""


class TrainingError(PrnadError, RuntimeError):
    """Training cannot go on: the loss became NaN or infinite, or the run folder is in the way."""


class InferenceError(PrnadError, RuntimeError):
    """A model produced unusable output (NaN or infinite maps)."""


class ExportError(PrnadError, RuntimeError):
    """Exporting a model failed inside the exporter or converter (ONNX export, OpenVINO conversion)."""
