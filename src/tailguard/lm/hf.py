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

from ..dists.lm import check_token_ids, continuation_logits, decode, padded_logits, vocab_size
from ..errors import InvalidArgumentError, ShapeMismatchError
from .prompts import encode

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

    ``end_id``: messages are variable-length and end at their first ``end_id`` (what an
    ``LMDistribution`` with that ``eos_id`` writes); the end token and the padding after
    it are dropped, the suffix (the template's end of turn) follows the message's last
    real token, and rows of different lengths run as one masked batch. Without it every
    message is all ``ctx`` tokens. Gradients flow to the LM's parameters, so hardening
    can fine-tune it (e.g. with LoRA adapters on ``lm``). A model with a KV cache runs
    the shared prefix once per call.
    """

    def __init__(self, lm: nn.Module, prefix_ids: Tensor | None = None, suffix_ids: Tensor | None = None,
                 end_id: int | None = None):
        super().__init__()
        if not callable(lm):
            raise InvalidArgumentError("lm must be a callable causal language model")
        self.lm = lm
        self.prefix_ids: Tensor = _ids(prefix_ids, "prefix_ids")
        self.suffix_ids: Tensor = _ids(suffix_ids, "suffix_ids")
        for name, ids in (("prefix_ids", self.prefix_ids), ("suffix_ids", self.suffix_ids)):
            check_token_ids(ids, vocab_size(lm), name)
        if end_id is not None and (isinstance(end_id, bool) or not isinstance(end_id, int) or end_id < 0):
            raise InvalidArgumentError(f"end_id must be a non-negative int or None, got {end_id!r}")
        self.end_id = end_id

    def _message(self, x: Tensor) -> Tensor:
        """x (n, ctx) checked, with the suffix appended: (n, ctx + s)."""
        self._check(x)
        ids = torch.cat([x.long(), self.suffix_ids.to(x.device).expand(x.shape[0], -1)], dim=1)
        if ids.shape[1] + self.prefix_ids.numel() == 0:
            raise ShapeMismatchError("NextTokenLogits needs at least one token of context")
        return ids

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeMismatchError(f"NextTokenLogits expects token ids (n, ctx), got {shape}")
        check_token_ids(x, vocab_size(self.lm), "x")

    def turns(self, x: Tensor, reply: Tensor | None = None) -> list[Tensor]:
        """prefix + message + suffix (+ reply) per row of x (n, ctx), each message cut at its end token."""
        self._check(x)
        reply = torch.zeros(0, dtype=torch.long) if reply is None else reply
        parts = []
        for row in x.long():
            if self.end_id is not None:
                ends = torch.nonzero(row == self.end_id).flatten()
                row = row[: int(ends[0])] if ends.numel() else row
            parts.append(torch.cat([self.prefix_ids.to(x.device), row, self.suffix_ids.to(x.device),
                                    reply.to(x.device)]))
        if min(p.numel() for p in parts) == 0:
            raise ShapeMismatchError("NextTokenLogits needs at least one token of context")
        return parts

    def forward(self, x: Tensor) -> Tensor:
        if self.end_id is not None:
            return padded_logits(self.lm, self.turns(x), keep=1)[:, -1]
        ids = self._message(x)
        return continuation_logits(self.lm, self.prefix_ids.to(x.device), ids, keep=1)[:, -1]

    def greedy(self, x: Tensor, n_tokens: int) -> Tensor:
        """The LM's greedy continuation (n, n_tokens) after prefix + x + suffix (its reply)."""
        if not isinstance(n_tokens, int) or n_tokens < 1:
            raise InvalidArgumentError(f"n_tokens must be a positive int, got {n_tokens!r}")
        ids = self._message(x)
        return decode(self.lm, self.prefix_ids.to(x.device), ids, n_tokens, lambda y: y.argmax(-1))

    def sample(self, x: Tensor, n_tokens: int, generator: torch.Generator,
               temperature: float = 1.0) -> Tensor:
        """A sampled reply (n, n_tokens) after prefix + x + suffix, drawn with ``generator``.

        ``ContinuationMatches(pattern, lambda x: policy.sample(x, k, g), decode)`` then
        checks sampled replies rather than the greedy one: plain sampling of (message,
        reply) pairs estimates the chance that a deployed, sampling policy matches.
        """
        if not isinstance(n_tokens, int) or n_tokens < 1:
            raise InvalidArgumentError(f"n_tokens must be a positive int, got {n_tokens!r}")
        if not (isinstance(temperature, int | float) and 0 < temperature < float("inf")):
            raise InvalidArgumentError(f"temperature must be a finite number > 0, got {temperature!r}")
        ids = self._message(x)

        def draw(logits: Tensor) -> Tensor:
            probs = torch.softmax(logits.double().cpu() / temperature, dim=-1)
            return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)

        return decode(self.lm, self.prefix_ids.to(x.device), ids, n_tokens, draw)


class ReplyLogProb(nn.Module):
    """Token ids (n, ctx) -> (n, 1): log of the probability that the policy's *sampled* reply starts
    with one of ``replies`` (token-id sequences, e.g. the ids of "The password is").

    Exact, from teacher-forced logits: log sum_r prod_k P(r_k | turn, r_<k) at ``temperature``.
    With single-token replies it is the first-token mass on them. Pair it with
    ``tg.OutputAbove(0, math.log(threshold))``: catastrophe iff that probability exceeds
    ``threshold``; the score is smooth in every logit, so it is its own surrogate.
    """

    def __init__(self, policy: NextTokenLogits, replies: list[Tensor] | list[list[int]],
                 temperature: float = 1.0):
        super().__init__()
        if not isinstance(policy, NextTokenLogits):
            raise InvalidArgumentError("policy must be a NextTokenLogits (see chat_policy)")
        if not replies:
            raise InvalidArgumentError("replies must hold at least one token-id sequence")
        self.policy = policy
        self.replies = [_ids(torch.as_tensor(r, dtype=torch.long), "replies") for r in replies]
        if any(r.numel() == 0 for r in self.replies):
            raise InvalidArgumentError("every reply must hold at least one token")
        for r in self.replies:
            check_token_ids(r, vocab_size(policy.lm), "replies")
        if not (isinstance(temperature, int | float) and temperature > 0 and temperature < float("inf")):
            raise InvalidArgumentError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        terms = []
        for reply in self.replies:
            k = reply.numel()
            logits = padded_logits(self.policy.lm, self.policy.turns(x, reply[:-1]), keep=k)
            log_probs = torch.log_softmax(logits.float() / self.temperature, dim=-1)
            picked = log_probs.gather(2, reply.to(x.device)[None, :, None].expand(x.shape[0], k, 1))
            terms.append(picked.sum((1, 2)))
        return torch.logsumexp(torch.stack(terms, 1), dim=1, keepdim=True)


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

    return encode(tokenizer, before), encode(tokenizer, after)


def chat_policy(lm: nn.Module, tokenizer: Any, system: str | None = None,
                end_id: int | None = None) -> NextTokenLogits:
    """The LM answering a user message: ids (n, ctx) -> logits of its reply's first token.

    end_id: messages end at that token (variable length), as ``NextTokenLogits`` says.
    """
    prefix, suffix = chat_template_parts(tokenizer, system)
    return NextTokenLogits(lm, prefix, suffix, end_id=end_id)
