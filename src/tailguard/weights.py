"""Model weights in safetensors only: saved with their metadata, read without unpickling anything.

safetensors holds only tensors and a JSON header, so a hostile file cannot run code
the way an unpickled ``torch.load`` file can. A file safetensors refuses raises
WeightsError, naming the format it looks like (a pickle, a zip written by
``torch.save``, GGUF, ...) and how to convert it; a file whose tensors do not fit
the model names every mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import WeightsError

METADATA_KEY = "tailguard"

def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` as safetensors, with ``metadata`` as JSON in the header.

    Put the config that built the model in ``metadata``, so the file says how to rebuild it.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata or {})})
    return path


# leading bytes of formats people hand over as weights, and what to call them
_FOREIGN_FORMATS = (
    (b"PK\x03\x04", "a zip archive holding a pickle (what torch.save writes)"),
    (b"\x80\x02", "a pickle (torch.save) file"),
    (b"\x80\x03", "a pickle (torch.save) file"),
    (b"\x80\x04", "a pickle (torch.save) file"),
    (b"\x80\x05", "a pickle (torch.save) file"),
    (b"GGUF", "a GGUF file"),
    (b"\x93NUMPY", "a NumPy .npy file"),
    (b"\x89HDF", "an HDF5 (.h5) file"),
)
_CONVERT = (
    "convert it, in a process that trusts the file, with "
    "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')"
)


def _foreign_format(path: Path) -> str | None:
    """What a file safetensors refused looks like, from its first bytes (nothing is unpickled).

    Asked only after safetensors failed: a valid file's 8-byte header length can
    begin with the same bytes as a pickle.
    """
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head:
        return "an empty file"
    return next((kind for magic, kind in _FOREIGN_FORMATS if head.startswith(magic)), None)


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """All tensors of a safetensors file and its tailguard metadata ({} if none).

    Anything that is not a complete safetensors file (a pickle, a zip written by
    ``torch.save``, random bytes, a truncated download) raises WeightsError; a
    recognisable other format (pickle, zip, GGUF, ...) is named in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        kind = _foreign_format(path)
        if kind is not None:
            raise WeightsError(
                f"{path} looks like {kind}; tailguard reads weights only from .safetensors "
                f"and never unpickles files: {_CONVERT}"
            ) from exc
        raise WeightsError(f"{path} is not a valid safetensors file ({exc})") from exc
    try:
        meta = json.loads(header.get(METADATA_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path} has a corrupt '{METADATA_KEY}' metadata entry") from exc
    return tensors, meta


def weights_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata ``save_weights`` stored in a weights file."""
    return read_safetensors(path)[1]


def _mismatches(expected: dict[str, Tensor], found: dict[str, Tensor]) -> list[str]:
    """Human-readable differences between a model's state_dict and a file's tensors."""
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    return problems


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors file into ``model`` in place (strict: same keys, same shapes)."""
    tensors, _ = read_safetensors(path)
    problems = _mismatches(model.state_dict(), tensors)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise WeightsError(f"weights in {path} do not fit the model: {shown}")
    model.load_state_dict(tensors)
    return model
