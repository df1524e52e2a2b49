"""Language models behind tailguard's model interface: token ids in, next-token logits out.

Estimators see a model as a map from inputs (n, ...) to outputs (n, ...). For text
that map is "the logits of the token that follows": a user message x (token ids)
is wrapped in fixed text (a chat template's prefix and suffix), and the output is
the LM's distribution over the first token of its reply. Specs such as
``NextTokenIn`` then say which replies are catastrophic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..dists.lm import check_token_ids, continuation_logits, decode, vocab_size
from ..errors import InvalidArgumentError, ShapeMismatchError

#: stands for the user message while a chat template is rendered
_SLOT = "\u2063MESSAGE\u2063"


def _ids(t: Tensor | None, name: str) -> Tensor:
    if t is None:
        return torch.zeros(0, dtype=torch.long)
    if not isinstance(t, Tensor) or t.dim() != 1 or t.is_floating_point():
        raise ShapeMismatchError(f"{name} must be a LongTensor of token ids (p,)")
    return t.long()


class NextTokenLogits(nn.Module):
    """Token ids (n, ctx) -> logits (n, vocab) of the token after prefix + x + suffix.

    Gradients flow to the LM's parameters, so hardening can fine-tune it (e.g. with LoRA
    adapters on ``lm``). A model with a KV cache runs the shared prefix once per call.
    """

    def __init__(self, lm: nn.Module, prefix_ids: Tensor | None = None, suffix_ids: Tensor | None = None):
        super().__init__()
        if not callable(lm):
            raise InvalidArgumentError("lm must be a callable causal language model")
        self.lm = lm
        self.prefix_ids: Tensor = _ids(prefix_ids, "prefix_ids")
        self.suffix_ids: Tensor = _ids(suffix_ids, "suffix_ids")
        for name, ids in (("prefix_ids", self.prefix_ids), ("suffix_ids", self.suffix_ids)):
            check_token_ids(ids, vocab_size(lm), name)

    def _message(self, x: Tensor) -> Tensor:
        """x (n, ctx) checked, with the suffix appended: (n, ctx + s)."""
        if not isinstance(x, Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeMismatchError(f"NextTokenLogits expects token ids (n, ctx), got {shape}")
        check_token_ids(x, vocab_size(self.lm), "x")
        ids = torch.cat([x.long(), self.suffix_ids.to(x.device).expand(x.shape[0], -1)], dim=1)
        if ids.shape[1] + self.prefix_ids.numel() == 0:
            raise ShapeMismatchError("NextTokenLogits needs at least one token of context")
        return ids

    def forward(self, x: Tensor) -> Tensor:
        ids = self._message(x)
        return continuation_logits(self.lm, self.prefix_ids.to(x.device), ids, keep=1)[:, -1]

    def greedy(self, x: Tensor, n_tokens: int) -> Tensor:
        """The LM's greedy continuation (n, n_tokens) after prefix + x + suffix (its reply)."""
        if not isinstance(n_tokens, int) or n_tokens < 1:
            raise InvalidArgumentError(f"n_tokens must be a positive int, got {n_tokens!r}")
        ids = self._message(x)
        return decode(self.lm, self.prefix_ids.to(x.device), ids, n_tokens, lambda y: y.argmax(-1))


def chat_template_parts(tokenizer: Any, system: str | None = None) -> tuple[Tensor, Tensor]:
    """(prefix_ids, suffix_ids) around a user message in the tokenizer's chat template.

    The template is rendered with a placeholder message and split at it, so the reply
    starts right after ``suffix_ids`` (the assistant's turn header).
    """
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": _SLOT})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if text.count(_SLOT) != 1:
        raise InvalidArgumentError("the tokenizer's chat template does not place the user message once")
    before, after = text.split(_SLOT)

    def encode(s: str) -> Tensor:
        return torch.tensor(tokenizer(s, add_special_tokens=False)["input_ids"], dtype=torch.long)

    return encode(before), encode(after)


def chat_policy(lm: nn.Module, tokenizer: Any, system: str | None = None) -> NextTokenLogits:
    """The LM answering a user message: ids (n, ctx) -> logits of its reply's first token."""
    prefix, suffix = chat_template_parts(tokenizer, system)
    return NextTokenLogits(lm, prefix, suffix)
