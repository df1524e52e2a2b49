"""Checkpoints for long runs: one safetensors file holding every tensor, JSON metadata in its header.

Nothing is pickled. The file embeds the configuration that produced it, so a
resume with a different configuration is refused rather than silently mixed.
Files are written to a temporary name and renamed, so a run killed mid-write
keeps its previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from ..errors import InvalidArgumentError, WeightsError

FILE_NAME = "checkpoint.safetensors"


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able metadata."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            key = f"{idx}.{name}"
            if isinstance(value, Tensor):
                tensors[key] = value.detach().clone().contiguous()
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of flatten_optimizer."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: Path, groups: dict[str, dict[str, Tensor]], meta: dict[str, Any]
) -> Path:
    """Write tensors grouped by prefix (``{"model": state_dict, ...}``) plus ``meta`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    flat = {
        f"{group}/{name}": t.detach().cpu().contiguous()
        for group, tensors in groups.items()
        for name, t in tensors.items()
    }
    path = directory / FILE_NAME
    tmp = directory / (FILE_NAME + ".tmp")
    save_file(flat, str(tmp), metadata={"tailguard": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: Path) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Read a checkpoint written by save_checkpoint; WeightsError if it is missing or corrupt."""
    path = directory / FILE_NAME
    if not path.is_file():
        raise InvalidArgumentError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        flat = load_file(str(path))
        meta = json.loads(header["tailguard"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise WeightsError(
            f"checkpoint {path} is corrupt or not a tailguard checkpoint: {exc}"
        ) from exc
    groups: dict[str, dict[str, Tensor]] = {}
    for key, t in flat.items():
        group, name = key.split("/", 1)
        groups.setdefault(group, {})[name] = t
    return groups, meta
