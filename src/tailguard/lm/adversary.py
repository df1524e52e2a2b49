"""Fine-tune an LM adversary: a LoRA copy of the model that writes the messages a policy fails on.

Prompting alone barely helps (a model asked for messages that make a door-lock
assistant open the door writes messages about as dangerous as ordinary ones), so the
adversary q_phi, an ``LMDistribution`` started from such a prompt, trains LoRA
adapters to ascend

    J(phi) = ln E_{x~q_phi}[pi(x)] - beta KL(q_phi || q_0),

pi(x) the policy's probability that its sampled reply starts with a forbidden token
and q_0 the adversary before training (the same LM, adapters disabled). Messages are
discrete, so the gradient is the score-function (REINFORCE, Williams 1992) form, from
exact sequence log-probabilities:

    grad ln E[pi] = E[pi grad ln q] / E[pi],    grad KL = E[(ln q - ln q_0) grad ln q],

estimated on each batch with a leave-one-out baseline per message (Kool, van Hoof &
Welling 2019, "Buy 4 REINFORCE samples, get a baseline for free"): the advantage of
message i is (pi_i - mean_{j != i} pi_j) / mean(pi), and the same for its KL term
ln q(x_i) - ln q_0(x_i). The KL keeps the adversary writing what its prompt would
(plausible messages, with density where D has it) instead of collapsing onto one
string that works, which is also what keeps it usable as an importance-sampling
proposal for D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..dists.lm import LMDistribution
from ..errors import InvalidArgumentError
from .proposal import forbidden_mass
from .training import Progress, TrainingSettings, adapters_off, check_forbidden, run_training, with_adapters


@dataclass(frozen=True)
class AdversarySettings(TrainingSettings):
    """``beta``: weight of KL(q_phi || q_0) in nats per message; ``batch`` >= 2 (leave-one-out)."""

    beta: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch < 2:
            raise InvalidArgumentError(f"batch must be >= 2 for the leave-one-out baseline, got {self.batch}")
        if not (isinstance(self.beta, int | float) and math.isfinite(self.beta) and self.beta >= 0):
            raise InvalidArgumentError(f"beta must be a finite number >= 0, got {self.beta!r}")


@dataclass(frozen=True)
class AdversaryResult:
    """The trained adversary and one row per step: ``objective``, ``kl``, ``mean_pi``, ``step``.

    ``dist`` writes messages with the trained adapters; its ``lm`` with adapters
    disabled (``training.adapters_off``) is the adversary before training.
    """

    dist: LMDistribution
    history: list[dict[str, float]]
    settings: AdversarySettings
    seed: int


def leave_one_out(values: Tensor) -> Tensor:
    """values (n,) minus, for each, the mean of the other n - 1 (n >= 2)."""
    n = values.numel()
    return values - (values.sum() - values) / (n - 1)


def train_adversary(adversary: LMDistribution, policy: nn.Module, forbidden: list[int],
                    settings: AdversarySettings = AdversarySettings(), seed: int = 0,
                    checkpoint_dir: str | Path | None = None,
                    progress: Progress | None = None) -> AdversaryResult:
    """Ascend ln E_q[pi] - beta KL(q || q_0) over LoRA adapters of the adversary's LM.

    adversary: writes messages (n, length); if its LM has no LoRA adapters yet, they are
    added in place (``settings.lora_rank``, ``settings.lora_targets``), so give it its
    own copy of the LM; if it has some, those train on (e.g. a second round against a
    hardened policy). policy: message ids (n, length) -> first-reply-token logits
    (n, vocab); forbidden: the token ids whose mass is pi. With ``checkpoint_dir`` a
    killed run resumes from its last checkpoint (every ``settings.checkpoint_every`` steps).
    """
    if not isinstance(adversary, LMDistribution):
        raise InvalidArgumentError(f"adversary must be an LMDistribution, got {type(adversary).__name__}")
    check_forbidden(forbidden)
    lm = with_adapters(adversary.lm, settings, seed)
    dist = adversary if lm is adversary.lm else LMDistribution(
        lm, adversary.prompt_ids, adversary.length, adversary.temperature, adversary.eos_id,
        adversary.batch_size)

    def step(generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            x = dist.sample(settings.batch, generator)
            pi = forbidden_mass(policy(x), forbidden)
        with adapters_off(lm):
            log_q0 = dist.log_prob(x)
        log_q = dist.log_prob(x)
        kl = log_q.detach() - log_q0
        mean_pi = pi.mean()
        gain = leave_one_out(pi) / mean_pi if mean_pi > 0 else torch.zeros_like(pi)
        loss = -((gain - settings.beta * leave_one_out(kl)) * log_q).mean()
        metrics = {"mean_pi": float(mean_pi), "kl": float(kl.mean()),
                   "objective": math.log(max(float(mean_pi), 1e-300)) - settings.beta * float(kl.mean())}
        return loss, metrics

    history = run_training(lm, step, settings, seed, checkpoint_dir, progress)
    return AdversaryResult(dist, history, settings, seed)
