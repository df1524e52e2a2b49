"""A neural generator with an exact density: a RealNVP flow on the base Gaussian's whitened coords.

A member draws z0 ~ N(0, I), pushes it through ``n_layers`` affine coupling
layers (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real
NVP"), and maps the result back to input space with the base Gaussian's
affine unwhitening x = mean + L z. Each layer keeps the coordinates where its
mask is 1 and transforms the others, z_j -> z_j exp(s_j) + t_j, with (s, t)
computed from the kept coordinates by a one-hidden-layer tanh network; s is
tanh-bounded so every layer stays well conditioned. Masks alternate between
layers, so every coordinate is transformed.

The change of variables gives the density exactly, and relative to the base it
needs no determinant of L at all:

    ln q(x) - ln p(x) = ln N(z0; 0, I) - ln N(z; 0, I) - sum_l sum_j s_lj(z0).

The network is written functionally (a params dict -> forward pass) so the
Family API's parameter dicts are the flow's weights. Plausibility is a
Monte-Carlo estimate of KL(member || base) = E_q[ln q - ln p] on a fixed
internal set of base draws z0: a deterministic, differentiable function of the
weights. The penalty is kl_weight times it; with ``max_kl`` the estimate is
also held below max_kl by ``project``, which shrinks the conditioners' output
layers towards the identity flow (KL = 0) by one common factor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..dists.base import Distribution
from ..dists.gaussian import Gaussian
from ..errors import InvalidArgumentError
from .base import Family, Params
from .shift import largest_feasible_factor

#: |s| <= this in every coupling layer: a factor of at most e^2 per layer and coordinate
LOG_SCALE_BOUND = 2.0
#: the conditioners' output layers; scaling them by 0 gives the identity flow
OUTPUT_KEYS = ("ws", "bs", "wt", "bt")
#: seed of the fixed base draws on which the KL is estimated (a quadrature set, not a stream)
_KL_SEED = 0
#: extra gain of the output layers, so that one optimiser step moves s and t by about 0.1
OUTPUT_GAIN = 0.1


def alternating_masks(n_layers: int, d: int) -> Tensor:
    """(n_layers, d) masks of 1 (kept) and 0 (transformed), alternating parity between layers."""
    idx = torch.arange(d)
    return torch.stack([((idx + layer) % 2 == 0).double() for layer in range(n_layers)])


def gain(key: str, d: int, hidden: int) -> float:
    """Run-time multiplier of a stored weight ("equalised learning rate", Karras et al. 2018).

    Weights are stored at unit scale and multiplied by 1/sqrt(fan-in) (and
    OUTPUT_GAIN for the output layers) in the forward pass, so an optimiser's
    step size means the same for every layer and width.
    """
    fan_in = {"w1": d, "b1": 1, "ws": hidden, "wt": hidden, "bs": 1, "bt": 1}[key]
    out = OUTPUT_GAIN if key in OUTPUT_KEYS else 1.0
    return out / math.sqrt(fan_in)


def conditioner(params: Params, layer: int, kept: Tensor) -> tuple[Tensor, Tensor]:
    """Log-scales and shifts (n, d) of a coupling layer from its kept coordinates (n, d)."""
    d, hidden = params[f"{layer}.w1"].shape
    p = {k: params[f"{layer}.{k}"] * gain(k, d, hidden) for k in ("w1", "b1", *OUTPUT_KEYS)}
    h = torch.tanh(kept @ p["w1"] + p["b1"])
    log_scale = LOG_SCALE_BOUND * torch.tanh((h @ p["ws"] + p["bs"]) / LOG_SCALE_BOUND)
    return log_scale, h @ p["wt"] + p["bt"]


def flow_forward(params: Params, masks: Tensor, z0: Tensor) -> tuple[Tensor, Tensor]:
    """z = f(z0) for z0 (n, d), and ln|det df/dz0| (n,)."""
    z, log_det = z0, torch.zeros(z0.shape[0], dtype=torch.float64)
    for layer, m in enumerate(masks):
        log_scale, shift = conditioner(params, layer, z * m)
        z = m * z + (1 - m) * (z * torch.exp(log_scale) + shift)
        log_det = log_det + ((1 - m) * log_scale).sum(1)
    return z, log_det


def flow_inverse(params: Params, masks: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """z0 = f^{-1}(z) for z (n, d), and the forward ln|det df/dz0| at z0 (n,)."""
    log_det = torch.zeros(z.shape[0], dtype=torch.float64)
    for layer in reversed(range(masks.shape[0])):
        m = masks[layer]
        log_scale, shift = conditioner(params, layer, z * m)
        z = m * z + (1 - m) * (z - shift) * torch.exp(-log_scale)
        log_det = log_det + ((1 - m) * log_scale).sum(1)
    return z, log_det


def log_ratio_at(params: Params, masks: Tensor, z0: Tensor) -> tuple[Tensor, Tensor]:
    """f(z0) (n, d) and ln q(x) - ln p(x) (n,) at x = unwhiten(f(z0))."""
    z, log_det = flow_forward(params, masks, z0)
    return z, 0.5 * (z**2).sum(1) - 0.5 * (z0**2).sum(1) - log_det


class FlowDistribution(Distribution):
    """The flow's pushforward of the base Gaussian; exact sample, rsample and log_prob.

    It has no reversible MCMC move and no moment description, so splitting and
    moments do not apply; sampling estimators do.
    """

    def __init__(self, base: Gaussian, params: Params, masks: Tensor):
        self.base = base
        self.params = params
        self.masks = masks
        self.event_shape = base.event_shape

    def rsample(self, n: int, generator: torch.Generator) -> Tensor:
        z0 = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        z, _ = flow_forward(self.params, self.masks, z0)
        return self.base.unwhiten(z)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            return self.rsample(n, generator)

    def log_prob(self, x: Tensor) -> Tensor:
        """ln p_base(x) + ln N(z0) - ln N(z) - ln|det df/dz0|, with z = whiten(x), z0 = f^-1(z)."""
        self.check_inputs(x)
        z = self.base.whiten(x)
        z0, log_det = flow_inverse(self.params, self.masks, z)
        return self.base.log_prob(x) - 0.5 * (z0**2).sum(1) + 0.5 * (z**2).sum(1) - log_det

    def __repr__(self) -> str:
        return f"FlowDistribution(event_shape={self.event_shape}, layers={self.masks.shape[0]})"


def _check_count(value: object, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidArgumentError(f"{name} must be an int >= {least}, got {value!r}")
    return value


def _check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _detached(base: Gaussian) -> Gaussian:
    """The same Gaussian without autograd history (the family's reference is fixed)."""
    if base.cov is not None:
        return Gaussian(base.mean.detach(), cov=base.cov.detach())
    assert base.std is not None
    return Gaussian(base.mean.detach(), std=base.std.detach())


class FlowFamily(Family):
    """Members: RealNVP flows of the base Gaussian, plausible when their KL to it is small.

    Parameters: for each layer l, ``l.w1`` (d, hidden), ``l.b1`` (hidden), and the
    output layers ``l.ws``, ``l.wt`` (hidden, d), ``l.bs``, ``l.bt`` (d), stored at
    unit scale (see ``gain``). Candidates draw the output layers with stored std
    ``init_scale`` (s and t of about 0.1 init_scale: near the identity).

    The KL is estimated on ``kl_samples`` fixed base draws; it is unbiased for any
    fixed weights, but a flow with many more weights than draws could learn to look
    close on those draws alone, so keep ``kl_samples`` well above the dimension.
    ``member`` uses the weights as given: the bound max_kl holds after ``project``,
    which the attack calls after every step.
    """

    def __init__(
        self,
        base: Gaussian,
        n_layers: int = 4,
        hidden: int = 32,
        max_kl: float | None = None,
        kl_weight: float = 1.0,
        kl_samples: int = 512,
        init_scale: float = 1.0,
    ):
        if not isinstance(base, Gaussian):
            raise InvalidArgumentError(
                f"base must be a tailguard Gaussian, got {type(base).__name__}"
            )
        self.base = _detached(base)
        self.n_layers = _check_count(n_layers, "n_layers", 1)
        self.hidden = _check_count(hidden, "hidden", 1)
        self.max_kl = None if max_kl is None else _check_number(max_kl, "max_kl")
        if self.max_kl is not None and self.max_kl <= 0:
            raise InvalidArgumentError(f"max_kl must be > 0, got {max_kl!r}")
        self.kl_weight = _check_number(kl_weight, "kl_weight")
        if self.kl_weight < 0:
            raise InvalidArgumentError(f"kl_weight must be >= 0, got {kl_weight!r}")
        if self.max_kl is None and self.kl_weight == 0:
            raise InvalidArgumentError(
                "give max_kl or a kl_weight > 0: otherwise every flow would count as plausible"
            )
        self.init_scale = _check_number(init_scale, "init_scale")
        if self.init_scale < 0:
            raise InvalidArgumentError(f"init_scale must be >= 0, got {init_scale!r}")
        self.event_shape = base.event_shape
        self.d = base.dim
        self.masks = alternating_masks(self.n_layers, self.d)
        gen = torch.Generator().manual_seed(_KL_SEED)
        n_kl = _check_count(kl_samples, "kl_samples", 2)
        self.kl_draws = torch.randn(n_kl, self.d, generator=gen, dtype=torch.float64)

    # --- weights ------------------------------------------------------------------------------
    def initial(self, generator: torch.Generator, init_scale: float) -> Params:
        """Random weights whose output layers have stored std ``init_scale`` (0: identity flow)."""
        d, h = self.d, self.hidden
        shapes = {"w1": (d, h), "b1": (h,), "ws": (h, d), "bs": (d,), "wt": (h, d), "bt": (d,)}
        params: Params = {}
        for layer in range(self.n_layers):
            for key, shape in shapes.items():
                std = init_scale if key in OUTPUT_KEYS else 1.0
                w = std * torch.randn(*shape, generator=generator, dtype=torch.float64)
                params[f"{layer}.{key}"] = w.requires_grad_(True)
        return params

    def candidates(self, n: int, generator: torch.Generator) -> list[Params]:
        """Near-identity random flows (output layers of std init_scale), projected if bounded."""
        out = []
        for _ in range(n):
            params = self.initial(generator, self.init_scale)
            self.project(params)
            out.append(params)
        return out

    # --- plausibility -------------------------------------------------------------------------
    def kl(self, params: Params) -> Tensor:
        """Monte-Carlo KL(member || base) in nats on the fixed draws (differentiable scalar)."""
        _, log_ratio = log_ratio_at(params, self.masks, self.kl_draws)
        return log_ratio.mean()

    def _shrunk(self, params: Params, t: float) -> Params:
        return {k: v * t if k.split(".")[1] in OUTPUT_KEYS else v for k, v in params.items()}

    def project(self, params: Params) -> None:
        """With max_kl: shrink the output layers by one factor in [0, 1] until KL <= max_kl."""
        if self.max_kl is None:
            return
        with torch.no_grad():
            if float(self.kl(params)) <= self.max_kl:
                return
            t = largest_feasible_factor(
                lambda s: float(self.kl(self._shrunk(params, s))), self.max_kl, 1.0
            )
            for k, v in params.items():
                if k.split(".")[1] in OUTPUT_KEYS:
                    v.mul_(t)

    def penalty(self, params: Params) -> Tensor:
        """kl_weight * the Monte-Carlo KL (nats), subtracted from the attack objective."""
        if self.kl_weight == 0:
            return torch.zeros((), dtype=torch.float64)
        return self.kl_weight * self.kl(params)

    # --- the family ---------------------------------------------------------------------------
    def member(self, params: Params) -> FlowDistribution:
        return FlowDistribution(self.base, params, self.masks)

    def constraint(self) -> str:
        bound = "" if self.max_kl is None else f"; KL <= {self.max_kl:g} nats is enforced"
        return (
            f"a {self.n_layers}-layer affine-coupling flow of the base Gaussian, penalised by "
            f"{self.kl_weight:g} x KL(member || base), estimated on {self.kl_draws.shape[0]} "
            f"fixed base draws{bound}"
        )

    def describe(self, params: Params) -> dict[str, object]:
        """The KL and the member's mean shift in input space (its weights are not readable)."""
        with torch.no_grad():
            z, _ = flow_forward(params, self.masks, self.kl_draws)
            shift = self.base.unwhiten(z).mean(0) - self.base.unwhiten(self.kl_draws).mean(0)
            return {"kl": float(self.kl(params)), "mean_shift": shift.tolist()}
