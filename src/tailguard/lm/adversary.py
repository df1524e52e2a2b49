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
from typing import Any

import torch
from torch import Tensor, nn

from .._logspace import logmeanexp
from ..dists.lm import LMDistribution
from ..errors import InvalidArgumentError
from ..harden.checkpoint import FILE_NAME, flatten_optimizer, unflatten_optimizer
from ..harden.game import Groups, train_loop
from ..specs import Spec
from .training import Progress, TrainingSettings, adapters_off, run_config, trainable, with_adapters


@dataclass(frozen=True)
class AdversarySettings(TrainingSettings):
    """``beta``: weight of KL(q_phi || q_0) in nats per message; ``diversity``: weight of the log
    number of copies of each message in its batch (a message written k times loses diversity * ln k);
    ``batch`` >= 2 (leave-one-out)."""

    beta: float = 0.05
    diversity: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch < 2:
            raise InvalidArgumentError(f"batch must be >= 2 for the leave-one-out baseline, got {self.batch}")
        for name in ("beta", "diversity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value >= 0):
                raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class AdversaryResult:
    """The trained adversary and one row per step: ``objective``, ``kl``, ``mean_pi``, ``distinct``, ``step``.

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


def catastrophe_mass(policy: nn.Module, spec: Spec, x: Tensor) -> Tensor:
    """pi(x) (n,): exp(spec.soft) of the policy's output, for ``NextTokenIn`` the mass of its forbidden
    first tokens (the chance that a sampled reply starts with one)."""
    return spec.soft(x, policy(x), 1.0).double().exp()


class LMAdversary:
    """An LM writer with LoRA adapters as an adversary of the game (``harden.adversary.Adversary``).

    ``step`` is one REINFORCE ascent (own Adam) of the objective in the module
    docstring; ``log_probs`` is ln mean pi over a fresh batch of its messages,
    differentiable in the policy.
    """

    def __init__(self, name: str, dist: LMDistribution, policy: nn.Module, spec: Spec,
                 settings: AdversarySettings, floor: float = -math.inf, weight: float = 1.0):
        if not isinstance(dist, LMDistribution):
            raise InvalidArgumentError(f"adversary must be an LMDistribution, got {type(dist).__name__}")
        if not isinstance(spec, Spec):
            raise InvalidArgumentError(f"spec must be a tailguard spec, got {type(spec).__name__}")
        self.name, self.dist, self.policy, self.spec, self.settings = name, dist, policy, spec, settings
        self.floor, self.weight = floor, weight
        self.optimizer = torch.optim.Adam(trainable(dist.lm).values(), lr=settings.lr)

    def reinforce_loss(self, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """The score-function surrogate whose gradient is the objective's, and the step's figures."""
        cfg, dist = self.settings, self.dist
        with torch.no_grad():
            x = dist.sample(cfg.batch, generator)
            pi = catastrophe_mass(self.policy, self.spec, x)
        with adapters_off(dist.lm):
            log_q0 = dist.log_prob(x)
        log_q = dist.log_prob(x)
        kl = log_q.detach() - log_q0
        _, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
        copies = counts[inverse].double().log()
        mean_pi = pi.mean()
        gain = leave_one_out(pi) / mean_pi if mean_pi > 0 else torch.zeros_like(pi)
        penalty = cfg.beta * leave_one_out(kl) + cfg.diversity * leave_one_out(copies)
        loss = -((gain - penalty) * log_q).mean()
        metrics = {"mean_pi": float(mean_pi), "kl": float(kl.mean()), "distinct": float(counts.numel()),
                   "objective": math.log(max(float(mean_pi), 1e-300)) - cfg.beta * float(kl.mean())}
        return loss, metrics

    def step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        loss, metrics = self.reinforce_loss(generator)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {f"{self.name}_{k}": v for k, v in metrics.items()}

    def log_probs(self, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            x = self.dist.sample(self.settings.batch, generator)
        return logmeanexp(self.spec.soft(x, self.policy(x), 1.0).double())[None]

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        adapters = {f"adapters/{k}": p.detach() for k, p in trainable(self.dist.lm).items()}
        return {**adapters, **{f"optimizer/{k}": v for k, v in opt_tensors.items()}}, {"optimizer": opt_meta}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, p in trainable(self.dist.lm).items():
                p.copy_(tensors[f"adapters/{k}"])
        opt = {k.removeprefix("optimizer/"): v for k, v in tensors.items() if k.startswith("optimizer/")}
        self.optimizer.load_state_dict(unflatten_optimizer(opt, meta["optimizer"]))


class _AdversaryAlone:
    """The adversary as the player of ``train_loop``, against a policy that does not train."""

    def __init__(self, adversary: LMAdversary):
        self.adversary = adversary

    def trainable(self) -> dict[str, Tensor]:
        return trainable(self.adversary.dist.lm)

    def loss(self, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        return self.adversary.reinforce_loss(generator)

    def state(self) -> tuple[Groups, dict[str, Any]]:
        return {}, {}

    def load_state(self, groups: Groups, meta: dict[str, Any]) -> None:
        return None


def writer_with_adapters(adversary: LMDistribution, settings: TrainingSettings, seed: int) -> LMDistribution:
    """``adversary`` itself if its LM has adapters, else the same writer over its LM with new ones."""
    if not isinstance(adversary, LMDistribution):
        raise InvalidArgumentError(f"adversary must be an LMDistribution, got {type(adversary).__name__}")
    lm = with_adapters(adversary.lm, settings, seed)
    if lm is adversary.lm:
        return adversary
    return LMDistribution(lm, adversary.prompt_ids, adversary.length, adversary.temperature, adversary.eos_id,
                          adversary.batch_size)


def train_adversary(adversary: LMDistribution, policy: nn.Module, spec: Spec,
                    settings: AdversarySettings = AdversarySettings(), seed: int = 0,
                    checkpoint_dir: str | Path | None = None,
                    progress: Progress | None = None) -> AdversaryResult:
    """Ascend ln E_q[pi] - beta KL(q || q_0) over LoRA adapters of the adversary's LM.

    adversary: writes messages (n, length); if its LM has no LoRA adapters yet, they are
    added in place (``settings.lora_rank``, ``settings.lora_targets``), so give it its
    own copy of the LM; if it has some, those train on (e.g. a second round against a
    hardened policy). policy: message ids (n, length) -> outputs (first-reply-token
    logits); spec: the catastrophe (e.g. ``NextTokenIn``), pi = exp(spec.soft). With
    ``checkpoint_dir`` a killed run resumes from its last checkpoint (every
    ``settings.checkpoint_every`` steps).
    """
    dist = writer_with_adapters(adversary, settings, seed)
    player = _AdversaryAlone(LMAdversary("adversary", dist, policy, spec, settings))
    resume = checkpoint_dir is not None and (Path(checkpoint_dir) / FILE_NAME).is_file()

    def on_step(done: int, row: dict[str, Any]) -> None:
        if progress is not None:
            progress(done - 1, {k: v for k, v in row.items() if k != "step"})

    was_training = dist.lm.training
    dist.lm.train()
    try:
        trace = train_loop(player, settings.loop(), seed, run_config(settings, seed), checkpoint_dir, resume,
                           on_step)
    finally:
        dist.lm.train(was_training)
    return AdversaryResult(dist, trace.steps, settings, seed)
