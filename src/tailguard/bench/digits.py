"""The digits case: a small trained MLP under noisy real images, truth by plain sampling.

Model: Flatten -> Linear(64, 64) -> ReLU -> Linear(64, 10), trained full-batch with
Adam on scikit-learn's 8x8 digits (images (n, 8, 8) in [0, 1]) in a few seconds,
deterministically from a seed. D = NoisyEmpirical(training images whose class is
not k, noise std sigma); the catastrophe is ClassIs(k). No closed form exists, so
the truth is plain Monte Carlo at a large budget (Clopper-Pearson CI), computed
once by ``compute_digits_truth`` and stored in ``DIGITS_TRUTH``; the stored value
is tied to a fingerprint of the trained weights, checked when the case is built.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from .._logspace import binomial_log_ci, to_log10
from ..dists import NoisyEmpirical
from ..specs import ClassIs
from ..tasks.digits import load_digits_data
from .cases import Case

TARGET = 0
SIGMA = 0.08

#: the output of compute_digits_truth(n=100_000_000) (95 % Clopper-Pearson CI)
DIGITS_TRUTH: dict[str, object] = {
    "log10_p": -4.56019378860667, "ci_log10": (-4.576571544939111, -4.543968402814229),
    "hits": 2753, "draws": 100_000_000, "seed": 12_345, "fingerprint": 899.566,
}


@lru_cache(maxsize=2)
def train_digits_mlp(seed: int = 0, steps: int = 400, lr: float = 1e-2) -> nn.Sequential:
    """64 -> 64 -> 10 ReLU MLP, full-batch Adam with weight decay (a few seconds on a CPU).

    Trained in float64 and returned in float32: float32 training gives weights that
    depend on the number of CPU threads (reduction order), which would silently
    invalidate the stored truth.
    """
    data = load_digits_data()
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).double()
    with torch.no_grad():
        for p in model.parameters():
            scale = 0.1 if p.dim() == 1 else 1 / 8
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    x, y = data.x_train.double(), data.y_train
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.float().eval()


def fingerprint(model: nn.Module) -> float:
    """Sum of |parameters|, rounded: enough to notice that training produced other weights."""
    return round(float(sum(p.detach().double().abs().sum() for p in model.parameters())), 3)


def digits_problem(
    sigma: float = SIGMA, target: int = TARGET
) -> tuple[nn.Module, NoisyEmpirical, ClassIs]:
    """(model, D, spec) of the digits case."""
    data = load_digits_data()
    points = data.x_train[data.y_train != target]
    return train_digits_mlp(), NoisyEmpirical(points, sigma), ClassIs(target)


def count_hits(model: nn.Module, dist: NoisyEmpirical, spec: ClassIs, n: int, seed: int,
               batch: int = 1 << 18) -> int:
    """Catastrophes among n draws from D, in float32 batches (the truth's only cost)."""
    g = torch.Generator().manual_seed(seed)
    centres = dist.points.reshape(dist.n_components, -1).float()
    sigma = float(dist.noise_std)
    hits = 0
    with torch.no_grad():
        for start in range(0, n, batch):
            m = min(batch, n - start)
            k = torch.randint(dist.n_components, (m,), generator=g)
            x = centres[k] + sigma * torch.randn(m, centres.shape[1], generator=g)
            hits += int((spec.score(x, model(x)) > 0).sum())
    return hits


def compute_digits_truth(n: int = 100_000_000, seed: int = 12_345,
                         confidence: float = 0.95) -> dict[str, object]:
    """Plain sampling at a large budget: what ``DIGITS_TRUTH`` stores (minutes on a CPU).

    Run ``python -c "from tailguard.bench.digits import compute_digits_truth as f; print(f())"``
    and paste the result into DIGITS_TRUTH when the model or D changes.
    """
    model, dist, spec = digits_problem()
    hits = count_hits(model, dist, spec, n, seed)
    low, high = binomial_log_ci(hits, n, confidence)
    return {"log10_p": math.log10(hits / n), "ci_log10": (to_log10(low), to_log10(high)),
            "hits": hits, "draws": n, "seed": seed, "fingerprint": fingerprint(model)}


def digits_case() -> Case:
    """The case with the stored truth; warns (in truth_source) if the weights changed."""
    model, dist, spec = digits_problem()
    source = (f"plain sampling: {DIGITS_TRUTH['hits']} hits in {DIGITS_TRUTH['draws']:,} draws "
              "(digits.compute_digits_truth)")
    if fingerprint(model) != DIGITS_TRUTH["fingerprint"]:
        source += "; WARNING: the trained weights differ from those the truth was computed for"
    ci = DIGITS_TRUTH["ci_log10"]
    assert isinstance(ci, tuple | list)
    low, high = float(ci[0]), float(ci[1])
    return Case(f"digits/sigma={SIGMA:g}", "digits", model, dist, spec,
                float(DIGITS_TRUTH["log10_p"]), (low, high), source)  # type: ignore[arg-type]
