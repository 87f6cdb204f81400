"""The run-folder layout, shared by training (which writes it) and inference (which reads it).

A run folder holds ``config.yaml`` (the run's config, written when training starts), ``train_log.jsonl``,
``checkpoint.safetensors`` (periodic, with the optimiser, for ``--resume``), ``model.safetensors`` (the
final model, what inference loads) and ``metrics.json`` (written by evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"


@dataclass(frozen=True)
class RunPaths:
    """Files of a run folder."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def model(self) -> Path:
        return self.root / MODEL

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def run_files(self) -> list[Path]:
        """The files of a run that exist in this folder (what ``--overwrite`` removes)."""
        return [p for p in (self.model, self.checkpoint, self.config, self.log, self.metrics) if p.exists()]
