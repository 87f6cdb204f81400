"""Self-describing checkpoints in safetensors: no pickle, so nothing in a file can run code.

One file holds the format version, the run's config, the model's state (prototypes, trainable weights,
BatchNorm statistics and the frozen encoder, so that inference needs no download) and, for resumable
checkpoints, the optimiser's state and the iteration. Writes are atomic: a temporary file in the same
folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prnad._version import __version__
from prnad.config import RunConfig, from_dict, to_dict
from prnad.errors import CheckpointError, ConfigError
from prnad.model import PRN, build_encoder, build_prn
from prnad.model.encoder import load_strict

FORMAT = "prnad-checkpoint"
FORMAT_VERSION = 1
_MODEL = "model."
_OPTIM = "optim."


@dataclass
class Checkpoint:
    """What a checkpoint file holds, loaded."""

    model: PRN
    config: RunConfig
    iteration: int
    info: dict[str, Any]
    optimizer_state: dict[str, Any] | None


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into flat tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            tensors[f"{_OPTIM}{idx}.{name}"] = torch.as_tensor(value).contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key[len(_OPTIM) :].split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | Path,
    *,
    model: PRN,
    config: RunConfig,
    iteration: int,
    info: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write ``model`` (and the optimiser, for resuming) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {_MODEL + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"optimizer": None}
    if optimizer is not None:
        optim_tensors, meta["optimizer"] = _optimizer_tensors(optimizer.state_dict())
        tensors.update({k: v.cpu() for k, v in optim_tensors.items()})
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "prnad_version": __version__,
        "config": json.dumps(to_dict(config)),
        "iteration": str(iteration),
        "info": json.dumps(info or {}),
        "optimizer": json.dumps(meta["optimizer"]),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=header)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {exc})") from exc
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a prnad checkpoint (format {header.get('format')!r})")
    version = header.get("format_version", "")
    if not version.isdigit():
        raise CheckpointError(f"{path}: checkpoint header has no valid format_version ({version!r})")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {header['format_version']} is newer than this prnad ({FORMAT_VERSION}); upgrade prnad"
        )
    return header, tensors


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from the file alone (no encoder download) and load every tensor strictly."""
    path = Path(path)
    header, tensors = _read(path)
    config = _header_config(header, path)
    state = {k[len(_MODEL) :]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    prototypes = [state.get(f"prototypes_{i}") for i in range(len(config.model.head_scales))]
    if any(p is None for p in prototypes):
        raise CheckpointError(f"{path}: checkpoint has no prototypes")
    skeleton = replace(config.model.encoder, weights="random")  # every encoder weight comes from the file
    banks = [state[k] for k in sorted(state) if k.startswith("score_bank_")]
    model = build_prn(config.model, prototypes=prototypes, encoder=build_encoder(skeleton), score_banks=banks or None)
    if not banks:  # checkpoints of prnad before score banks hold no statistics; without banks they are (0, 1)
        state.setdefault("score_stats", model.score_stats)
        state.setdefault("map_stats", model.map_stats)
    load_strict(model, state, path, what="the model its config describes (written by another prnad version?)")
    optim_meta = json.loads(header.get("optimizer", "null"))
    optim_tensors = {k: v for k, v in tensors.items() if k.startswith(_OPTIM)}
    return Checkpoint(
        model=model.to(map_location),
        config=config,
        iteration=int(header.get("iteration", 0)),
        info=json.loads(header.get("info", "{}")),
        optimizer_state=_optimizer_state(optim_tensors, optim_meta) if optim_meta else None,
    )


# Defaults that changed since checkpoints were first written: a stored config without the key was made with
# the old value, which must win over today's default.
_OLD_MODEL_DEFAULTS = {
    "prototype_match": "map",
    "score_bank_size": 0,
    "head_scales": [0, 1, 2],  # the light head (1, 2) became the default after these keys were written
    "msa_scales": [0, 1, 2],
    "bank_map_weights": [1.0, 1.0],  # the stride-16 map at half weight became the default later
    "decoder_bottom": True,  # every checkpoint written before the key had a decoder starting at stride 32
    "bank_query_stride": 8,  # and queried its banks at every location of their own scale
}


def _with_old_defaults(values: object) -> object:
    """The stored config dict with the old defaults filled in where a key is missing (see _OLD_MODEL_DEFAULTS)."""
    if isinstance(values, dict) and isinstance(values.get("model", {}), dict):
        values = {**values, "model": {**_OLD_MODEL_DEFAULTS, **values.get("model", {})}}
    return values


def _header_config(header: dict[str, str], path: Path) -> RunConfig:
    """The run config stored in the header; a missing, unparsable or stale one is an error naming the file."""
    if "config" not in header:
        raise CheckpointError(f"{path}: checkpoint has no config in its header; it cannot be rebuilt")
    try:
        return from_dict(RunConfig, _with_old_defaults(json.loads(header["config"])))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the config in its header is not valid JSON ({exc})") from exc
    except ConfigError as exc:
        raise CheckpointError(
            f"{path}: its config does not fit this prnad {__version__} (written by another version?): {exc}"
        ) from exc
