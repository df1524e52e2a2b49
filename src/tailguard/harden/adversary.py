"""The adversary's side of the hardening game: a protocol and the adversaries over inputs.

An ``Adversary`` moves against the current policy (``step``, the policy frozen)
and estimates ln P[C] on its own distribution, differentiably in the policy
(``log_probs``, the adversary frozen); the game floors and weights those values
(``harden.objective``). Here:

- ``FamilyAdversary``: a pool of members of a ``Family`` kept near the model's
  worst case. Several members at once (a failure found at one patch position
  does not mean there is none at another); each step ascends every member's
  reparameterised surrogate by one Adam step; from time to time candidates are
  screened and the weakest member is replaced when a candidate beats it, so the
  adversary keeps exploring as the model closes the holes it knows about. The
  candidates are a random draw from the whole family (a fixed prefix of
  ``family.candidates`` would revisit the same patch positions forever) and the
  members that left the pool (an archive): a hole the model closed while a
  member pressed on it can open again once the pool has moved on.
- ``FixedAdversary``: a distribution that does not move (the deployment
  distribution, any tailguard ``Distribution``) or a fixed pool of inputs (the
  messages an earlier adversary wrote).

The language-model adversary (REINFORCE over a LoRA-tuned writer) is
``tailguard.lm.adversary.LMAdversary``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .._logspace import logmeanexp
from ..attack import check_positive_float, check_positive_int
from ..dists.base import Distribution
from ..errors import InvalidArgumentError
from ..estimate import log_prob
from ..families.base import Family, Params, detach_params
from ..oracle import ScoreOracle
from .checkpoint import flatten_optimizer, unflatten_optimizer
from .objective import member_log_prob, surrogate_log_prob


class Adversary(Protocol):
    """One player against the policy; ``floor`` (natural log) and ``weight`` are its term's."""

    name: str
    floor: float
    weight: float

    def step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        """One move against the current (frozen) policy; figures for the step's row."""
        ...

    def log_probs(self, generator: torch.Generator) -> Tensor:
        """ln P_hat[C] (k,) on each of its k distributions, differentiable in the policy."""
        ...

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]: ...

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class PoolSettings:
    """Pool size, candidates screened at the start, draws per surrogate, its temperature,
    Adam's step on the members, how often (steps) candidates are tried, and how many
    members that left the pool are kept to be tried again."""

    pool_size: int = 6
    candidates: int = 72
    samples: int = 128
    temperature: float = 0.25
    lr: float = 0.3
    refresh_every: int = 10
    archive_size: int = 24

    def __post_init__(self) -> None:
        for name in ("pool_size", "candidates", "samples", "refresh_every", "archive_size"):
            check_positive_int(getattr(self, name), name)
        for name in ("temperature", "lr"):
            check_positive_float(getattr(self, name), name)
        if self.pool_size > self.candidates:
            raise InvalidArgumentError("pool_size must not exceed candidates")


@dataclass(frozen=True)
class Balance:
    """Dual ascent on an adversary term's weight: the weight follows the constraint it serves.

    Each step the weight is multiplied by exp(rate * clip(v - target, -1, 1)), v the
    pool's highest surrogate ln P_hat (before the step's ascent): it grows while a
    member is above ``target`` (natural log) and shrinks while none is, within
    [weight / spread, weight * ceiling] of its starting value (``ceiling`` 1: never
    above the starting weight, only relaxed while the family is safe). A fixed weight must
    be set per task to trade robustness for accuracy; this one spends pressure
    only while the family holds a member above the target (the multiplier of
    the constraint max_member ln P <= target, as in a Lagrangian method).
    """

    target: float
    rate: float = 0.05
    spread: float = 10.0
    ceiling: float = 10.0

    def __post_init__(self) -> None:
        check_positive_float(self.rate, "balance_rate")
        for name in ("spread", "ceiling"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 1.0 <= value < math.inf:
                raise InvalidArgumentError(f"balance_{name} must be a finite number >= 1, got {value!r}")

    def update(self, weight: float, start: float, highest: float) -> float:
        """The weight after a step whose pool's highest surrogate was ``highest``."""
        moved = weight * math.exp(self.rate * min(max(highest - self.target, -1.0), 1.0))
        return min(max(moved, start / self.spread), start * self.ceiling)


class FamilyAdversary:
    """``settings.pool_size`` members of ``family`` kept near the model's worst case.

    With a ``balance`` the term's ``weight`` adapts each step (``Balance``); without, it stays fixed.
    """

    def __init__(self, name: str, family: Family, oracle: ScoreOracle, settings: PoolSettings,
                 floor: float, weight: float = 1.0, balance: Balance | None = None):
        self.name, self.family, self.oracle, self.settings = name, family, oracle, settings
        self.floor, self.weight, self.start_weight, self.balance = floor, weight, weight, balance
        self.members: list[Params] = []
        self.archive: list[Params] = []
        self.optimizer: torch.optim.Optimizer | None = None

    def _value(self, params: Params, n: int, generator: torch.Generator) -> Tensor:
        return member_log_prob(self.oracle, self.family, params, n, self.settings.temperature, generator)

    def _screen(self, starts: list[Params], n: int, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            return torch.stack([self._value(p, n, generator) for p in starts])

    def _reset_optimizer(self) -> None:
        leaves = [p for m in self.members for p in m.values() if p.requires_grad]
        self.optimizer = torch.optim.Adam(leaves, lr=self.settings.lr)

    def start(self, generator: torch.Generator) -> None:
        """The pool: the best ``pool_size`` of ``candidates`` fresh candidates by surrogate value."""
        cfg = self.settings
        starts = self.family.candidates(cfg.candidates, generator)
        values = self._screen(starts, cfg.samples, generator)
        order = torch.argsort(values, descending=True, stable=True)[: cfg.pool_size]
        self.members = [starts[int(i)] for i in order]
        self._reset_optimizer()

    def _member_values(self, generator: torch.Generator, frozen: bool) -> Tensor:
        members = [detach_params(m) for m in self.members] if frozen else self.members
        return torch.stack([self._value(m, self.settings.samples, generator) for m in members])

    def step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        """One Adam step up for every member; every ``refresh_every`` steps a fresh candidate may enter."""
        if not self.members:
            self.start(generator)
        assert self.optimizer is not None
        values = self._member_values(generator, frozen=False)
        leaves = self.optimizer.param_groups[0]["params"]
        grads = torch.autograd.grad(-values.sum(), leaves)
        for leaf, g in zip(leaves, grads, strict=True):
            leaf.grad = g
        self.optimizer.step()
        with torch.no_grad():
            for m in self.members:
                self.family.project(m)
        if step % self.settings.refresh_every == 0:
            self._refresh(values.detach(), generator)
        if self.balance is None:
            return {}
        self.weight = self.balance.update(self.weight, self.start_weight, float(values.detach().max()))
        return {f"{self.name}_weight": self.weight}

    def _refresh(self, current: Tensor, generator: torch.Generator) -> None:
        """Replace the weakest member by the best candidate (fresh or archived) if it is stronger."""
        cfg = self.settings
        everywhere = self.family.candidates(cfg.candidates, generator)
        chosen = torch.randperm(len(everywhere), generator=generator)[: cfg.candidates // 4 or 1]
        starts = [everywhere[int(i)] for i in chosen] + self.archive
        values = self._screen(starts, cfg.samples // 2 or 1, generator)
        best, weakest = int(values.argmax()), int(current.argmin())
        if values[best] > current[weakest]:
            self.admit(starts[best], weakest)

    def admit_in_place_of_weakest(self, params: Params, generator: torch.Generator) -> None:
        """Put a member found elsewhere (detached, e.g. by ``tailguard.attack``) in place of the weakest."""
        if not self.members:
            self.start(generator)
        with torch.no_grad():
            values = self._member_values(generator, frozen=True)
        self.admit(self._as_leaves(params), int(values.argmin()))

    def _as_leaves(self, params: Params) -> Params:
        """Copies of ``params`` with the family's continuous parameters requiring grad again."""
        template = self.family.candidates(1, torch.Generator())[0]
        return {k: v.detach().clone().requires_grad_(template[k].requires_grad) for k, v in params.items()}

    def admit(self, params: Params, replacing: int) -> None:
        """Put ``params`` in the pool in place of member ``replacing``, which goes to the archive."""
        leaving = self._as_leaves(self.members[replacing])
        self.archive = [m for m in self.archive if m is not params]
        self.archive = [*self.archive, leaving][-self.settings.archive_size:]
        self.members[replacing] = params
        self._reset_optimizer()

    def log_probs(self, generator: torch.Generator) -> Tensor:
        return self._member_values(generator, frozen=True)

    def worst(self, generator: torch.Generator) -> Params:
        """The member with the highest surrogate now (detached)."""
        with torch.no_grad():
            values = self._member_values(generator, frozen=True)
        return detach_params(self.members[int(values.argmax())])

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        assert self.optimizer is not None
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        members = {f"{i}.{k}": v for i, m in enumerate(self.members) for k, v in detach_params(m).items()}
        archive = {f"archive/{i}.{k}": v for i, m in enumerate(self.archive) for k, v in m.items()}
        return ({**members, **archive, **{f"optimizer/{k}": v for k, v in opt_tensors.items()}},
                {"optimizer": opt_meta, "weight": self.weight})

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        members: dict[int, Params] = {}
        archive: dict[int, Params] = {}
        opt_tensors = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                opt_tensors[key.removeprefix("optimizer/")] = value
                continue
            into = archive if key.startswith("archive/") else members
            i, name = key.removeprefix("archive/").split(".", 1)
            into.setdefault(int(i), {})[name] = value
        self.members = [self._as_leaves(members[i]) for i in sorted(members)]
        self.archive = [self._as_leaves(archive[i]) for i in sorted(archive)]
        self._reset_optimizer()
        assert self.optimizer is not None
        self.optimizer.load_state_dict(unflatten_optimizer(opt_tensors, meta["optimizer"]))
        self.weight = float(meta.get("weight", self.start_weight))


ESTIMATORS = ("surrogate", "is")


class FixedAdversary:
    """A distribution that does not move, or a fixed pool of inputs (m, *event_shape).

    ``estimator`` "surrogate": ln mean exp(spec.soft) over ``samples`` draws
    (reparameterised where the distribution allows); "is": ``tailguard.log_prob``
    with importance sampling, for distributions (e.g. conditioned ones) whose
    draws carry no gradient but whose density does.
    """

    def __init__(self, name: str, source: Distribution | Tensor, oracle: ScoreOracle, samples: int,
                 temperature: float, floor: float, weight: float = 1.0, estimator: str = "surrogate"):
        if not isinstance(source, Distribution | Tensor):
            raise InvalidArgumentError(
                f"{name} must be a tailguard distribution or a tensor of inputs, got {type(source).__name__}"
            )
        if isinstance(source, Tensor) and (source.dim() < 1 or source.shape[0] < 1):
            raise InvalidArgumentError(f"{name} must hold at least one input, got {tuple(source.shape)}")
        if estimator not in ESTIMATORS or (estimator == "is" and isinstance(source, Tensor)):
            raise InvalidArgumentError(f"estimator must be one of {ESTIMATORS} ('is' needs a distribution), "
                                       f"got {estimator!r}")
        self.name, self.source, self.oracle = name, source, oracle
        self.samples, self.temperature = check_positive_int(samples, "samples"), temperature
        self.floor, self.weight, self.estimator = floor, weight, estimator

    def step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        return {}

    def log_probs(self, generator: torch.Generator) -> Tensor:
        source = self.source
        if isinstance(source, Tensor):
            x = source[torch.randint(source.shape[0], (self.samples,), generator=generator)]
            soft = self.oracle.spec.soft(x, self.oracle.outputs(x), self.temperature)
            return logmeanexp(soft.double())[None]
        if self.estimator == "is":
            value = log_prob(self.oracle.model, source, self.oracle.spec, method="is", budget=self.samples,
                             seed=generator)
            return value.double().reshape(1)
        return surrogate_log_prob(self.oracle, source, self.samples, self.temperature, generator)[None]

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {}, {}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        return None
