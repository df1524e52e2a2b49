"""Prompts from chat templates: one helper that works with transformers 4.56+ and 5.x.

``tokenizer.apply_chat_template(..., tokenize=True)`` returns a list of ids in
transformers 4.x and a ``BatchEncoding`` in 5.x; rendering to text first
(``tokenize=False``) and encoding that text without special tokens gives the same
ids under both, so every prompt in tailguard is built here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidArgumentError


def as_ids(encoded: Any) -> Tensor:
    """LongTensor (p,) from a tokenizer's output: a BatchEncoding or dict of input_ids, a list, a tensor."""
    if isinstance(encoded, Mapping) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded.input_ids
    ids = torch.as_tensor(encoded, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise InvalidArgumentError(f"expected the ids of one text, got shape {tuple(ids.shape)}")
    return ids


def encode(tokenizer: Any, text: str) -> Tensor:
    """The ids (p,) of ``text`` without special tokens (what follows inside a rendered template)."""
    return as_ids(tokenizer(text, add_special_tokens=False))


def chat_prompt(tokenizer: Any, user: str | None = None, system: str | None = None,
                messages: Sequence[Mapping[str, str]] | None = None,
                add_generation_prompt: bool = True) -> Tensor:
    """Token ids (p,) of a chat rendered by the tokenizer's template, ready for the assistant's reply.

    Give ``user`` (and optionally ``system``) for a one-turn chat, or ``messages``
    ([{"role": ..., "content": ...}, ...]) for any other; not both.
    """
    if (user is None) == (messages is None):
        raise InvalidArgumentError("give either user (and optionally system) or messages, not both")
    if messages is None:
        assert user is not None
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages = [*messages, {"role": "user", "content": user}]
    elif system is not None:
        raise InvalidArgumentError("system goes with user; put it into messages instead")
    if getattr(tokenizer, "chat_template", None) is None and not hasattr(tokenizer, "apply_chat_template"):
        raise InvalidArgumentError("the tokenizer has no chat template")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):
        raise InvalidArgumentError(f"the chat template rendered {type(text).__name__}, not text")
    return encode(tokenizer, text)
