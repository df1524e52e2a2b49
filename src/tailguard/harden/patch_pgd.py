"""Input-space PGD over a patch family: the worst patch for each image, found by projected ascent.

Madry et al. (2018), "Towards Deep Learning Models Resistant to Adversarial
Attacks", train on the worst-case perturbation found per example by projected
gradient ascent. Here the threat model is the PatchFamily itself: the adversary
may overwrite any k x k square with values in [0, 1], and the family's Gaussian
noise is drawn as in one of its members. The discrete choice (where) is made by
trying a few random positions at once; the continuous one (what) by signed
gradient ascent on the spec's smooth catastrophe surrogate, clamped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attack import check_positive_float, check_positive_int
from ..estimate import estimate
from ..families.base import Params, detach_params
from ..families.patch import PatchFamily
from ..oracle import eval_mode, model_dtype_device
from ..result import Estimate
from ..specs import Spec
from .policy import Batch, safe_rows


def position_masks(family: PatchFamily, positions: list[tuple[int, int]]) -> Tensor:
    """(P, H, W) float masks, 1 inside the k x k square at each (row, col)."""
    h, w = family.event_shape
    k = family.patch_size
    masks = torch.zeros(len(positions), h, w)
    for i, (r, c) in enumerate(positions):
        masks[i, r : r + k, c : c + k] = 1.0
    return masks


class PatchPGD:
    """Per batch: worst patch for every safe image over ``n_positions`` random positions.

    ``steps`` signed-gradient steps of size ``step_size`` on the patch values,
    maximising ``spec.soft`` (log sigmoid of the catastrophe margin).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: Spec,
        family: PatchFamily,
        n_positions: int,
        steps: int,
        step_size: float,
    ):
        self.model, self.spec, self.family = model, spec, family
        self.n_positions = min(n_positions, len(family.positions))
        self.steps, self.step_size = steps, step_size
        self.model_calls = 0

    def perturb(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """x (m, H, W) -> (worst patched images (m, H, W), catastrophic after search (m,) bool)."""
        positions = self.family.positions
        chosen = torch.randperm(len(positions), generator=generator)[: self.n_positions]
        masks = position_masks(self.family, [positions[int(i)] for i in chosen])[:, None]
        shape = (self.n_positions, *x.shape)
        noise = self.family.noise_std * torch.randn(shape, generator=generator)
        values = torch.rand(shape, generator=generator)
        outside = x.unsqueeze(0) * (1 - masks) + noise
        with eval_mode(self.model):
            for _ in range(self.steps):
                values.requires_grad_(True)
                objective = self._soft(outside + masks * values).sum()
                (grad,) = torch.autograd.grad(objective, values)
                values = (values.detach() + self.step_size * grad.sign()).clamp(0.0, 1.0)
            candidates = (outside + masks * values).detach()
            with torch.no_grad():
                scores = self._score(candidates)
        best = scores.argmax(0)
        rows = torch.arange(x.shape[0])
        return candidates[best, rows], scores[best, rows] > 0

    def _flat_outputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images (P, m, H, W) -> (flat images (P*m, H, W), model outputs)."""
        flat = images.reshape(-1, *images.shape[2:])
        self.model_calls += flat.shape[0]
        return flat, self.model(flat)

    def _soft(self, images: Tensor) -> Tensor:
        flat, out = self._flat_outputs(images)
        return self.spec.soft(flat, out)

    def _score(self, images: Tensor) -> Tensor:
        """(P, m) catastrophe scores."""
        flat, out = self._flat_outputs(images)
        return self.spec.score(flat, out).reshape(images.shape[:2])

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor | None, dict[str, float]]:
        """Cross-entropy of the true labels on the worst patched versions of the safe rows."""
        x, y = batch
        safe = safe_rows(self.model, self.spec, x, y)
        if not bool(safe.any()):
            return None, {}
        worst, caught = self.perturb(x[safe], generator)
        loss = nn.functional.cross_entropy(self.model(worst), y[safe])
        return loss, {
            "adversarial_loss": float(loss.detach()),
            "adversary_success": float(caught.float().mean()),
        }


@dataclass(frozen=True)
class PatternSearch:
    """Settings of ``pattern_attack``: ``steps`` signed-gradient steps of ``step_size`` on each
    position's pattern, ``images`` base images a step, ``finalists`` patterns judged by plain
    sampling with ``draws`` each."""

    steps: int = 40
    step_size: float = 0.05
    images: int = 64
    finalists: int = 3
    draws: int = 50_000

    def __post_init__(self) -> None:
        for name in ("steps", "images", "finalists", "draws"):
            check_positive_int(getattr(self, name), f"pattern_{name}")
        check_positive_float(self.step_size, "pattern_step_size")


def pattern_attack(model: nn.Module, spec: Spec, family: PatchFamily, search: PatternSearch,
                   seed: int) -> tuple[list[tuple[Params, Estimate]], int]:
    """The worst k x k pattern found at every position of ``family``, judged by plain sampling.

    A search of another kind than ``tailguard.attack`` (which screens random
    members and refines a few by Adam on ln mean exp(soft)): every position is
    tried, and each pattern climbs the *mean* of ``spec.soft`` over fresh base
    images by signed gradient steps (universal-perturbation PGD restricted to the
    square). The ``finalists`` best by hit rate on a fresh batch are estimated by
    plain sampling, whose exact interval depends on no proposal or surrogate.
    Returns ((parameters, estimate) of every finalist, model calls).
    """
    g = torch.Generator().manual_seed(seed)
    positions = family.positions
    masks = position_masks(family, positions)[:, None].double()  # (P, 1, H, W)
    k = family.patch_size
    values = torch.rand(len(positions), 1, *family.event_shape, generator=g, dtype=torch.float64)
    calls = 0

    def stamped(patterns: Tensor) -> Tensor:
        """(P, m, H, W): fresh base images with each position's pattern and the family's noise."""
        rows = torch.randint(len(family.base), (search.images,), generator=g)
        base = family.base[rows].unsqueeze(0)
        noise = family.noise_std * torch.randn(len(positions), *base.shape[1:], generator=g,
                                               dtype=torch.float64)
        return base * (1 - masks) + masks * patterns + noise

    dtype = model_dtype_device(model)[0]
    with eval_mode(model):
        for _ in range(search.steps):
            values.requires_grad_(True)
            images = stamped(values).to(dtype).reshape(-1, *family.event_shape)
            calls += images.shape[0]
            (grad,) = torch.autograd.grad(spec.soft(images, model(images)).sum(), values)
            values = (values.detach() + search.step_size * grad.sign()).clamp(0.0, 1.0)
        with torch.no_grad():
            images = stamped(values).to(dtype).reshape(-1, *family.event_shape)
            calls += images.shape[0]
            scores = spec.score(images, model(images)).reshape(len(positions), -1).double()
    # rank by hit rate, ties by the mean score
    rank = (scores > 0).double().mean(1) + 1e-6 * torch.sigmoid(scores).mean(1)
    finalists = []
    for i in rank.argsort(descending=True)[: search.finalists].tolist():
        r, c = positions[i]
        params = detach_params(family.params_at(r, c, values[i, 0, r : r + k, c : c + k]))
        found = estimate(model, family.member(params), spec, method="mc", budget=search.draws,
                         seed=seed + 1 + i)
        calls += found.n_model_calls
        finalists.append((params, found))
    return finalists, calls
