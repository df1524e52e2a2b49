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

from ..dists.lm import lm_logits
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
    adapters on ``lm``).
    """

    def __init__(self, lm: nn.Module, prefix_ids: Tensor | None = None, suffix_ids: Tensor | None = None):
        super().__init__()
        if not callable(lm):
            raise InvalidArgumentError("lm must be a callable causal language model")
        self.lm = lm
        self.prefix_ids: Tensor = _ids(prefix_ids, "prefix_ids")
        self.suffix_ids: Tensor = _ids(suffix_ids, "suffix_ids")

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeMismatchError(f"NextTokenLogits expects token ids (n, ctx), got {shape}")
        n = x.shape[0]
        device = x.device
        ids = torch.cat([self.prefix_ids.to(device).expand(n, -1), x.long(),
                         self.suffix_ids.to(device).expand(n, -1)], dim=1)
        if ids.shape[1] == 0:
            raise ShapeMismatchError("NextTokenLogits needs at least one token of context")
        return lm_logits(self.lm(input_ids=ids))[:, -1]


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
