"""The adversary's side of the hardening game: a pool of worst-case members of a family.

The pool holds several members at once (a failure found at one patch position
does not mean there is none at another). Each step ascends every member's
surrogate log-probability by one Adam step; from time to time fresh candidates
are screened and the weakest member is replaced when a candidate beats it, so
the adversary keeps exploring as the model closes the holes it knows about.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attack import surrogate_log_prob
from ..families.base import Family, Params, detach_params
from ..oracle import ScoreOracle


class AdversaryPool:
    """``size`` members of ``family`` kept near the model's worst case."""

    def __init__(self, family: Family, members: list[Params], lr: float):
        self.family = family
        self.lr = lr
        self.members = members
        self._reset_optimizer()

    def _reset_optimizer(self) -> None:
        leaves = [p for m in self.members for p in m.values() if p.requires_grad]
        self.optimizer = torch.optim.Adam(leaves, lr=self.lr)

    @classmethod
    def screened(
        cls,
        family: Family,
        oracle: ScoreOracle,
        size: int,
        n_candidates: int,
        samples: int,
        temperature: float,
        lr: float,
        generator: torch.Generator,
    ) -> AdversaryPool:
        """The ``size`` best of ``n_candidates`` fresh candidates by surrogate value."""
        starts = family.candidates(n_candidates, generator)
        with torch.no_grad():
            values = [
                float(surrogate_log_prob(oracle, family, p, samples, temperature, generator))
                for p in starts
            ]
        order = sorted(range(len(starts)), key=lambda i: -values[i])[:size]
        return cls(family, [starts[i] for i in order], lr)

    def log_probs(
        self,
        oracle: ScoreOracle,
        samples: int,
        temperature: float,
        generator: torch.Generator,
        frozen: bool = False,
    ) -> Tensor:
        """Surrogate ln P[C] of every member, (size,); ``frozen`` detaches the members."""
        members = [detach_params(m) for m in self.members] if frozen else self.members
        return torch.stack(
            [
                surrogate_log_prob(oracle, self.family, m, samples, temperature, generator)
                for m in members
            ]
        )

    def ascend(
        self, oracle: ScoreOracle, samples: int, temperature: float, generator: torch.Generator
    ) -> Tensor:
        """One Adam step up for every member, with the model frozen; returns the values before it."""
        values = self.log_probs(oracle, samples, temperature, generator)
        leaves = self.optimizer.param_groups[0]["params"]
        grads = torch.autograd.grad(-values.sum(), leaves)
        for leaf, g in zip(leaves, grads, strict=True):
            leaf.grad = g
        self.optimizer.step()
        with torch.no_grad():
            for m in self.members:
                self.family.project(m)
        return values.detach()

    def refresh(
        self,
        oracle: ScoreOracle,
        current: Tensor,
        n_candidates: int,
        samples: int,
        temperature: float,
        generator: torch.Generator,
    ) -> bool:
        """Replace the weakest member by the best fresh candidate if it is stronger."""
        starts = self.family.candidates(n_candidates, generator)
        with torch.no_grad():
            values = torch.stack(
                [
                    surrogate_log_prob(oracle, self.family, p, samples, temperature, generator)
                    for p in starts
                ]
            )
        best = int(values.argmax())
        weakest = int(current.argmin())
        if values[best] <= current[weakest]:
            return False
        self.members[weakest] = starts[best]
        self._reset_optimizer()
        return True

    def state(self) -> dict[str, Tensor]:
        """Member parameters as flat tensors for a checkpoint."""
        return {
            f"{i}.{k}": v for i, m in enumerate(self.members) for k, v in detach_params(m).items()
        }

    @staticmethod
    def members_from_state(tensors: dict[str, Tensor], template: Params) -> list[Params]:
        members: dict[int, Params] = {}
        for key, value in tensors.items():
            i, name = key.split(".", 1)
            v = value.clone()
            if template[name].requires_grad:
                v.requires_grad_(True)
            members.setdefault(int(i), {})[name] = v
        return [members[i] for i in sorted(members)]
