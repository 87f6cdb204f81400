"""Training: the anomaly stream and the loop."""

from prnad.training.trainer import train

__all__ = ["train"]
