"""Layer-by-layer propagation of Gaussian moments through a feed-forward network.

Each mixture component of D is pushed through the model as a Gaussian (mean and
covariance), all components at once as a batch. Linear layers are exact:
mu' = W mu + b, S' = W S W^T. After an elementwise nonlinearity f the output is
not Gaussian; we keep its exact mean and variance per unit (Gaussian closure)
and approximate the cross-covariances by Price's theorem truncated at order 2:

    Cov(f(a), f(b)) ~= E[f'(a)] E[f'(b)] Cov(a, b) + 1/2 E[f''(a)] E[f''(b)] Cov(a, b)^2,

the first two terms of the exact series sum_n Cov^n / n! E[f^(n)(a)] E[f^(n)(b)]
for jointly Gaussian (a, b) (Price 1958). Because the exact variance is the full
series on the diagonal, the truncated matrix plus the exact diagonal stays
positive semi-definite. Order 1 alone is the linearisation used by
deterministic variational inference (Wu et al., ICLR 2019, "Deterministic
variational inference for robust Bayesian neural networks").

Per-unit closed forms: ReLU mean/variance are exact (Frey & Hinton 1999); GELU
mean, E[f'] and E[f''] are exact, its second moment uses Gauss-Hermite
quadrature (GELU is smooth, so it converges fast); Tanh uses Gauss-Hermite
quadrature throughout (no closed form exists). Layers wider than
``full_cov_max_dim`` keep only variances (units treated as uncorrelated).
Everything runs in float64 with autograd, so the same code serves ``run`` and
the differentiable ``log_prob``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UnsupportedError

#: variances below this are treated as zero (a deterministic unit)
TINY_VAR = 1e-200
#: Gauss-Hermite nodes for the smooth activations
N_HERMITE = 128
_AFFINE = (nn.Linear, nn.Flatten, nn.Identity, nn.Dropout)
_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh)


@dataclass(frozen=True)
class GaussianBatch:
    """K Gaussians over a layer's flattened activations.

    mean: (K, n); second: (K, n, n) covariance when ``full`` else (K, n) variances;
    shape: the per-input activation shape (its product is n).
    """

    mean: Tensor
    second: Tensor
    full: bool
    shape: tuple[int, ...]

    def variances(self) -> Tensor:
        """(K, n) variance of every unit."""
        return torch.diagonal(self.second, dim1=-2, dim2=-1) if self.full else self.second


# --- the model as a list of supported layers ------------------------------------------------
def flat_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(dotted position, layer) for every leaf of a (nested) nn.Sequential or a bare layer.

    Raises UnsupportedError naming the first layer type that has no closed form.
    """
    if isinstance(model, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            for pos, leaf in flat_layers(child):
                out.append((f"{name}.{pos}" if pos else name, leaf))
        return out
    if isinstance(model, _AFFINE + _ACTIVATIONS):
        if isinstance(model, nn.GELU) and model.approximate != "none":
            raise UnsupportedError("GELU(approximate='tanh') is not supported; use the exact erf form")
        return [("", model)]
    raise UnsupportedError(
        f"layer {type(model).__name__} has no moment-propagation rule "
        "(supported: Sequential, Linear, ReLU, GELU, Tanh, Flatten, Identity, Dropout)"
    )


def _flatten_shape(layer: nn.Flatten, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-input shape after ``layer``; dim 0 is the batch and may not be flattened."""
    full = (1, *shape)
    start = layer.start_dim % len(full)
    end = layer.end_dim % len(full)
    if start == 0:
        raise UnsupportedError("Flatten(start_dim=0) merges the batch dimension")
    if end < start:
        return shape
    merged = int(np.prod(full[start : end + 1]))
    return (*full[1:start], merged, *full[end + 1 :])


def output_shape(layers: list[tuple[str, nn.Module]], in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Walk shapes through the layers, raising UnsupportedError where they do not fit."""
    shape = in_shape
    for pos, layer in layers:
        if isinstance(layer, nn.Linear):
            if len(shape) != 1 or shape[0] != layer.in_features:
                raise UnsupportedError(
                    f"Linear at position {pos!r} expects inputs of width {layer.in_features} "
                    f"but receives per-input shape {shape} (flatten multi-dimensional inputs first)"
                )
            shape = (layer.out_features,)
        elif isinstance(layer, nn.Flatten):
            shape = _flatten_shape(layer, shape)
    return shape


def is_affine(layers: list[tuple[str, nn.Module]]) -> bool:
    return all(isinstance(layer, _AFFINE) for _, layer in layers)


# --- linear layers ---------------------------------------------------------------------------
def linear(state: GaussianBatch, layer: nn.Linear, full_cov_max_dim: int) -> GaussianBatch:
    """Exact affine map; the output keeps a full covariance iff its width allows."""
    w = layer.weight.double()
    mean = state.mean @ w.T
    if layer.bias is not None:
        mean = mean + layer.bias.double()
    keep_full = layer.out_features <= full_cov_max_dim
    shared = state.second.shape[0] > 1 and state.second.stride(0) == 0
    if shared:  # one covariance for every component (e.g. data plus isotropic noise)
        one = linear(
            GaussianBatch(state.mean[:1], state.second[:1], state.full, state.shape), layer, full_cov_max_dim
        )
        return GaussianBatch(
            mean, one.second.expand(mean.shape[0], *one.second.shape[1:]), one.full, one.shape
        )
    if state.full and keep_full:
        second = w @ state.second @ w.T
    elif state.full:
        second = ((state.second @ w.T) * w.T).sum(-2)
    elif keep_full:
        second = (w * state.second[:, None, :]) @ w.T
    else:
        second = state.second @ (w**2).T
    return GaussianBatch(mean, second, keep_full, (layer.out_features,))


# --- elementwise nonlinearities --------------------------------------------------------------
def _log_pdf(z: Tensor) -> Tensor:
    return -0.5 * z**2 - 0.5 * math.log(2 * math.pi)


def _hermite(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Nodes and weights for E[g(Z)], Z ~ N(0, 1): sum_i w_i g(x_i)."""
    x, w = np.polynomial.hermite_e.hermegauss(N_HERMITE)
    return torch.tensor(x, dtype=dtype), torch.tensor(w / math.sqrt(2 * math.pi), dtype=dtype)


def _expect(fn: Callable[[Tensor], Tensor], mu: Tensor, sd: Tensor) -> Tensor:
    """E[fn(z)] for z ~ N(mu, sd^2) elementwise, by Gauss-Hermite quadrature: (K, n)."""
    x, w = _hermite(mu.dtype)
    return (fn(mu[..., None] + sd[..., None] * x) * w).sum(-1)


def relu_stats(mu: Tensor, var: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Exact (mean, variance, sd*E[f'], sd^2*E[f'']) of relu(z), z ~ N(mu, var)."""
    sd = torch.sqrt(var.clamp_min(TINY_VAR))
    a = mu / sd
    cdf, pdf = torch.special.ndtr(a), torch.exp(_log_pdf(a))
    mean = mu * cdf + sd * pdf
    # Var / var = (a^2 + 1) Phi + a phi - (a Phi + phi)^2, clamped against cancellation
    ratio = (a**2 + 1) * cdf + a * pdf - (a * cdf + pdf) ** 2
    return mean, var * ratio.clamp_min(0.0), sd * cdf, sd * pdf


def gelu_stats(mu: Tensor, var: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mean, variance, sd*E[f'], sd^2*E[f'']) of z Phi(z); only the variance uses quadrature.

    phi(z) N(z; mu, var) = N(mu; 0, 1 + var) N(z; mu / (1 + var), var / (1 + var)) gives
    E[phi(z)] and E[z^k phi(z)] in closed form, hence E[f'] = E[Phi(z) + z phi(z)] and
    E[f''] = E[(2 - z^2) phi(z)].
    """
    sd = torch.sqrt(var.clamp_min(TINY_VAR))
    t2 = 1 + var
    t = torch.sqrt(t2)
    g = torch.exp(_log_pdf(mu / t)) / t  # E[phi(z)]
    m_tilt, v_tilt = mu / t2, var / t2  # z under the phi-tilted Gaussian
    mean = mu * torch.special.ndtr(mu / t) + var / t * torch.exp(_log_pdf(mu / t))
    e_second = _expect(lambda z: (z * torch.special.ndtr(z)) ** 2, mu, sd)
    variance = (e_second - mean**2).clamp_min(0.0)
    d1 = torch.special.ndtr(mu / t) + g * m_tilt
    d2 = g * (2 - m_tilt**2 - v_tilt)
    return mean, variance, sd * d1, var * d2


#: tanh(z) ~ 2 Phi(_PROBIT z) - 1 (equal slope at 0); sech^2(z) ~ exp(-z^2 / (2 _BUMP^2)) (equal area)
_PROBIT = math.sqrt(math.pi / 2)
_BUMP = 2 / math.sqrt(2 * math.pi)


def tanh_stats(mu: Tensor, var: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mean, variance, sd*E[f'], sd^2*E[f'']) of tanh(z), z ~ N(mu, var).

    Quadrature alone is poor when sd >> 1 (tanh is then nearly a step), so the
    probit approximation of tanh and a Gaussian bump for sech^2 = 1 - tanh^2 are
    integrated in closed form and quadrature handles only the small residuals.
    """
    sd = torch.sqrt(var.clamp_min(TINY_VAR))
    probit = 2 * torch.special.ndtr(_PROBIT * mu / torch.sqrt(1 + _PROBIT**2 * var)) - 1
    mean = probit + _expect(lambda z: torch.tanh(z) - 2 * torch.special.ndtr(_PROBIT * z) + 1, mu, sd)
    width2 = _BUMP**2 + var
    bump = _BUMP / torch.sqrt(width2) * torch.exp(-0.5 * mu**2 / width2)
    sech2 = bump + _expect(lambda z: 1 - torch.tanh(z) ** 2 - torch.exp(-0.5 * (z / _BUMP) ** 2), mu, sd)
    variance = (1 - sech2 - mean**2).clamp_min(0.0)
    d2 = _expect(lambda z: -2 * torch.tanh(z) * (1 - torch.tanh(z) ** 2), mu, sd)
    return mean, variance, sd * sech2, var * d2


_STATS = {nn.ReLU: relu_stats, nn.GELU: gelu_stats, nn.Tanh: tanh_stats}


def activation(state: GaussianBatch, layer: nn.Module) -> GaussianBatch:
    """Exact per-unit mean/variance; order-2 Price series for the cross-covariances."""
    var = state.variances()
    mean, variance, h1, h2 = _STATS[type(layer)](state.mean, var)
    if not state.full:
        return GaussianBatch(mean, variance, False, state.shape)
    sd = torch.sqrt(var.clamp_min(TINY_VAR))
    rho = (state.second / (sd[:, :, None] * sd[:, None, :])).clamp(-1.0, 1.0)
    cov = h1[:, :, None] * h1[:, None, :] * rho + 0.5 * h2[:, :, None] * h2[:, None, :] * rho**2
    eye = torch.eye(cov.shape[-1], dtype=torch.bool)
    cov = torch.where(eye, torch.diag_embed(variance), cov)
    return GaussianBatch(mean, cov, True, state.shape)


# --- the whole network -----------------------------------------------------------------------
def propagate(
    layers: list[tuple[str, nn.Module]], state: GaussianBatch, full_cov_max_dim: int
) -> GaussianBatch:
    """Push the batch of Gaussians through every layer (Dropout acts as in eval mode)."""
    for _, layer in layers:
        if isinstance(layer, nn.Linear):
            state = linear(state, layer, full_cov_max_dim)
        elif isinstance(layer, nn.Flatten):
            state = GaussianBatch(state.mean, state.second, state.full, _flatten_shape(layer, state.shape))
        elif isinstance(layer, _ACTIVATIONS):
            state = activation(state, layer)
    return state


def input_batch(means: Tensor, covs: Tensor, shape: tuple[int, ...], full_cov_max_dim: int) -> GaussianBatch:
    """D's components (means (K, d), covs (K, d, d)) as the network's input, in float64."""
    means, covs = means.double(), covs.double()
    if means.shape[-1] <= full_cov_max_dim:
        return GaussianBatch(means, covs, True, shape)
    return GaussianBatch(means, torch.diagonal(covs, dim1=-2, dim2=-1), False, shape)
