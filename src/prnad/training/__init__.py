"""Training: the anomaly stream and the loop."""

from prnad.training.trainer import MODEL, RunPaths, train

__all__ = ["MODEL", "RunPaths", "train"]
