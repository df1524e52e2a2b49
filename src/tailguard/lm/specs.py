"""Catastrophe specs for text: forbidden next tokens (argmax or sampled), continuations, a trusted checker."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from numbers import Integral

import torch
from torch import Tensor

from ..errors import InvalidArgumentError, ShapeMismatchError
from ..specs import Predicate, Spec


class NextTokenIn(Spec):
    """The model's most likely next token is one of ``token_ids``.

    y: next-token logits (n, vocab). score = max logit over the forbidden set minus the
    max over the rest, so it grades how close a reply is to starting with a forbidden
    token (what splitting's levels and the cross-entropy elites climb).
    """

    def __init__(self, token_ids: Sequence[int]):
        raw = token_ids.tolist() if isinstance(token_ids, Tensor) else token_ids
        if isinstance(raw, int | str) or raw is None:
            raw = []
        ids = list(raw)
        if not ids or any(isinstance(t, bool) or not isinstance(t, Integral) or t < 0 for t in ids):
            raise InvalidArgumentError(
                f"token_ids must be a non-empty sequence of non-negative int token ids, got {token_ids!r}"
            )
        self.token_ids = sorted({int(t) for t in ids})

    def check_output(self, y: Tensor) -> None:
        if y.dim() != 2:
            raise ShapeMismatchError(f"NextTokenIn needs logits (n, vocab), got {tuple(y.shape)}")
        if self.token_ids[-1] >= y.shape[1] or len(self.token_ids) >= y.shape[1]:
            raise ShapeMismatchError(
                f"NextTokenIn token ids reach {self.token_ids[-1]} but the vocabulary has {y.shape[1]} tokens"
            )

    def _forbidden(self, y: Tensor) -> Tensor:
        """Mask (vocab,) of the forbidden tokens, after checking y."""
        self.check_output(y)
        forbidden = torch.zeros(y.shape[1], dtype=torch.bool, device=y.device)
        forbidden[self.token_ids] = True
        return forbidden

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        forbidden = self._forbidden(y)
        top_bad = y.masked_fill(~forbidden, float("-inf")).max(1).values
        top_ok = y.masked_fill(forbidden, float("-inf")).max(1).values
        return top_bad - top_ok

    def soft(self, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
        """log sigmoid(logsumexp(y_bad / T) - logsumexp(y_ok / T)), (n,): smooth in every logit.

        At T = 1 it is the log of the softmax mass on the forbidden set, i.e. the chance that a
        *sampled* reply starts with a forbidden token; as T -> 0 it tends to log 1[score > 0].
        """
        if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
            raise InvalidArgumentError(f"temperature must be a finite number > 0, got {temperature!r}")
        forbidden = self._forbidden(y)
        scaled = y / temperature
        bad = torch.logsumexp(scaled.masked_fill(~forbidden, float("-inf")), dim=1)
        ok = torch.logsumexp(scaled.masked_fill(forbidden, float("-inf")), dim=1)
        return torch.nn.functional.logsigmoid(bad - ok)

    def __repr__(self) -> str:
        return f"NextTokenIn({self.token_ids})"


class SampledTokenIn(NextTokenIn):
    """The policy's *sampled* next token is one of ``token_ids``: a catastrophe with chance pi(x).

    y: next-token logits (n, vocab); pi(x) is the softmax mass (at ``temperature``, the
    policy's sampling temperature) on the forbidden tokens, so P[C] = E_D[pi(x)] over
    messages and replies together. ``log_chance`` gives log pi exactly, and the LM
    estimators (``lm-is``, ``auto`` on an LM-written D) average pi instead of sampling
    replies: E[1[C] | x] = pi(x), so the mean is the same and its variance smaller
    (Rao-Blackwell). ``score`` samples the reply, log pi - log U with U uniform from the
    spec's own generator (``seed``), positive with probability pi exactly, so plain
    sampling (``mc``) of (message, reply) pairs estimates the same P[C].
    """

    def __init__(self, token_ids: Sequence[int], temperature: float = 1.0, seed: int = 0):
        super().__init__(token_ids)
        if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
            raise InvalidArgumentError(f"temperature must be a finite number > 0, got {temperature!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidArgumentError(f"seed must be an int, got {seed!r}")
        self.temperature = float(temperature)
        self.generator = torch.Generator().manual_seed(seed)

    def log_chance(self, x: Tensor, y: Tensor) -> Tensor:
        """log pi(x) (n,), float64: the log-probability that the sampled reply starts forbidden."""
        return NextTokenIn.soft(self, x, y, self.temperature).double()

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        u = torch.rand(y.shape[0], generator=self.generator, dtype=torch.float64)
        return self.log_chance(x, y).cpu() - torch.log(u)

    def soft(self, x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
        """log pi(x) (n,) at the policy's temperature: exactly log P[C | x], already smooth in every logit."""
        return NextTokenIn.soft(self, x, y, self.temperature)

    def __repr__(self) -> str:
        return f"SampledTokenIn({self.token_ids}, temperature={self.temperature:g})"


class ContinuationMatches(Predicate):
    """A continuation of ``n_tokens`` tokens, decoded, matches the regex ``pattern``.

    ``continue_ids(x) -> (n, n_tokens)`` writes the continuation: a policy's greedy reply
    (``NextTokenLogits.greedy``) or a sampled one (``NextTokenLogits.sample`` with a
    generator), and ``decode(ids) -> str`` turns one row into text. A black box: plain
    sampling only (over messages and, with sampled replies, replies too).
    """

    def __init__(self, pattern: str, continue_ids: Callable[[Tensor], Tensor],
                 decode: Callable[[Tensor], str]):
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise InvalidArgumentError(f"pattern is not a valid regular expression: {exc}") from exc
        if not callable(continue_ids) or not callable(decode):
            raise InvalidArgumentError("continue_ids and decode must be callable")

        def matches(x: Tensor, y: Tensor) -> Tensor:
            with torch.no_grad():
                cont = continue_ids(x)
            return torch.tensor([bool(regex.search(decode(row))) for row in cont])

        super().__init__(matches)
        self.pattern = pattern

    def __repr__(self) -> str:
        return f"ContinuationMatches({self.pattern!r})"


class CheckerFlags(Predicate):
    """A trusted checker ``fn(x, y) -> (n,) bool`` flags the (input, output) pair."""

    def __init__(self, checker: Callable[[Tensor, Tensor], Tensor]):
        if not callable(checker):
            raise InvalidArgumentError("checker must be callable")
        super().__init__(checker)

    def __repr__(self) -> str:
        return f"CheckerFlags({getattr(self.fn, '__name__', 'checker')})"


class JudgeAbove(Spec):
    """A judge scores each (input, output) pair; catastrophe iff the score exceeds ``threshold``.

    judge(x, y) -> (n,) float: a classifier's logit, or a second LM's verdict such as
    ``lm_verdict`` below. The score is graded, so rare-event methods can climb it, and
    ``soft`` is log sigmoid((score - threshold) / T), differentiable where the judge is.
    The judge's own forward passes are not model calls of the policy and are not counted.
    """

    def __init__(self, judge: Callable[[Tensor, Tensor], Tensor], threshold: float = 0.0):
        if not callable(judge):
            raise InvalidArgumentError("judge must be callable: judge(x, y) -> (n,) scores")
        finite = isinstance(threshold, int | float) and math.isfinite(threshold)
        if isinstance(threshold, bool) or not finite:
            raise InvalidArgumentError(f"threshold must be a finite number, got {threshold!r}")
        self.judge = judge
        self.threshold = float(threshold)

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        s = torch.as_tensor(self.judge(x, y))
        if s.shape != (x.shape[0],):
            raise ShapeMismatchError(f"the judge returned shape {tuple(s.shape)}; expected ({x.shape[0]},)")
        if not s.is_floating_point():
            raise InvalidArgumentError(f"the judge must return float scores, got dtype {s.dtype}")
        return s - self.threshold

    def __repr__(self) -> str:
        return f"JudgeAbove({getattr(self.judge, '__name__', 'judge')}, {self.threshold:g})"


def lm_verdict(judge: Callable[[Tensor], Tensor], yes_ids: Sequence[int],
               no_ids: Sequence[int]) -> Callable[[Tensor, Tensor], Tensor]:
    """A second LM as judge: log P(a "yes" token) - log P(a "no" token) as its first reply token.

    judge: a ``NextTokenLogits`` of the judging LM whose template asks whether the message
    (x) is harmful, ids (n, ctx) -> logits (n, vocab); the policy's output is not shown
    to it. Positive scores mean the judge leans to "yes".
    """
    yes, no = sorted({int(t) for t in yes_ids}), sorted({int(t) for t in no_ids})
    if not yes or not no or set(yes) & set(no):
        raise InvalidArgumentError("yes_ids and no_ids must be non-empty and disjoint")

    def verdict(x: Tensor, y: Tensor) -> Tensor:
        log_probs = torch.log_softmax(judge(x).double(), dim=-1)
        return torch.logsumexp(log_probs[:, yes], 1) - torch.logsumexp(log_probs[:, no], 1)

    return verdict
