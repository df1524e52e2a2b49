"""What an LM policy does on fixed messages: its catastrophe mass, and the KL that hardening cost.

The policy is a ``NextTokenLogits`` whose LM carries LoRA adapters; "the original
policy" is the same module with them off. Each message's catastrophe mass pi is
exact (a sum over the first reply token), so an estimate over fixed messages is a
mean with a CI over which messages were drawn, and before / after are paired on the
same messages, so that their ratio is not sampling noise. Training (``lm.harden``)
and its independent verdict (``harden.lm_judge``) both measure with these.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._logspace import normal_log_ci, to_log10
from ..errors import InvalidArgumentError
from ..result import Estimate
from ..specs import Spec
from .adversary import catastrophe_mass
from .hf import NextTokenLogits
from .training import adapters_off


def first_token_kl(policy: NextTokenLogits, messages: Tensor, batch: int = 32) -> Tensor:
    """KL(original || trained) (n,) of the first reply token on each message (n, length), in nats."""
    parts = []
    for i in range(0, messages.shape[0], batch):
        x = messages[i : i + batch]
        with adapters_off(policy.lm):
            reference = torch.log_softmax(policy(x).double(), -1)
        with torch.no_grad():
            new = torch.log_softmax(policy(x).double(), -1)
        parts.append((reference.exp() * (reference - new)).sum(1))
    return torch.cat(parts)


def mass_on(policy: nn.Module, messages: Tensor, spec: Spec, confidence: float = 0.95,
            batch: int = 32) -> Estimate:
    """The mean catastrophe mass pi over fixed messages (n, length) as an Estimate (normal CI on the mean).

    Each message's pi is exact, so the CI covers only which messages were drawn.
    """
    start = time.perf_counter()
    with torch.no_grad():
        pi = torch.cat([catastrophe_mass(policy, spec, messages[i : i + batch])
                        for i in range(0, messages.shape[0], batch)])
    mean = float(pi.mean())
    n = pi.numel()
    if mean > 0:
        rel_se = float(pi.std()) / math.sqrt(n) / mean if n > 1 else math.inf
        low, high = normal_log_ci(math.log(mean), rel_se, confidence)
    else:
        low = high = -math.inf
    return Estimate(
        log10_p=to_log10(math.log(mean)) if mean > 0 else -math.inf, ci_log10=(to_log10(low), to_log10(high)),
        n_model_calls=n, method="fixed-messages", seconds=time.perf_counter() - start, confidence=confidence,
        diagnostics={"messages": n, "distinct": int(torch.unique(messages, dim=0).shape[0]), "mean": mean,
                     "max_forbidden_mass": float(pi.max())},
    )


def message_row(e: Estimate) -> dict[str, Any]:
    """A ``mass_on`` estimate as report data: messages, distinct, mean, log10, ci_log10."""
    return {"messages": e.diagnostics["messages"], "distinct": e.diagnostics["distinct"],
            "mean": e.diagnostics["mean"], "log10": e.log10_p, "ci_log10": list(e.ci_log10)}


@dataclass(frozen=True)
class PolicyReport:
    """Forbidden mass per named message set, before and after hardening, and the KL it cost."""

    before: dict[str, Estimate]
    after: dict[str, Estimate]
    kl_mean: float
    kl_max: float
    kl_messages: int

    def lowered_by(self, name: str) -> float:
        """How many times lower the mass on message set ``name`` is after hardening."""
        return float(10.0 ** (self.before[name].log10_p - self.after[name].log10_p))

    def __str__(self) -> str:
        """A table to read: one line per message set (before, after, factor), then the KL it cost."""
        width = max(len(name) for name in self.before)
        lines = [f"{'message set':<{width}}  log10 mass before -> after  (lowered by)"]
        for name, before in self.before.items():
            after = self.after[name]
            factor = self.lowered_by(name)
            shown = f"{factor:.3g}x" if math.isfinite(factor) else "all of it"
            counts = f"{before.diagnostics['messages']} messages, {before.diagnostics['distinct']} distinct"
            change = f"{before.log10_p:8.2f} -> {after.log10_p:8.2f}"
            lines.append(f"{name:<{width}}  {change}  ({shown}; {counts})")
        lines.append(f"first-token KL on {self.kl_messages} held-out ordinary messages: "
                     f"mean {self.kl_mean:.3g} nats, max {self.kl_max:.3g}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"before": {k: message_row(e) for k, e in self.before.items()},
                "after": {k: message_row(e) for k, e in self.after.items()},
                "kl_first_token": {"mean": self.kl_mean, "max": self.kl_max, "messages": self.kl_messages}}


def policy_report(policy: NextTokenLogits, messages: dict[str, Tensor], spec: Spec,
                  held_out_ordinary: Tensor) -> PolicyReport:
    """Before (adapters off) and after (as trained) on each message set, and the KL on ordinary messages.

    messages: name -> message ids (n, length), none of them used in training;
    held_out_ordinary: ordinary messages (n, length) from D that training never saw.
    """
    if not isinstance(spec, Spec):
        raise InvalidArgumentError(f"spec must be a tailguard spec, got {type(spec).__name__}")
    if not messages:
        raise InvalidArgumentError("messages must name at least one message set")
    with adapters_off(policy.lm):
        before = {name: mass_on(policy, x, spec) for name, x in messages.items()}
    after = {name: mass_on(policy, x, spec) for name, x in messages.items()}
    kl = first_token_kl(policy, held_out_ordinary)
    return PolicyReport(before, after, float(kl.mean()), float(kl.max()), kl.numel())
