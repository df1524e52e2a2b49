"""The stress suite's trained case: a trained 8-32-32-1 margin network above a threshold.

A real network has no closed-form tail, so its truth is plain sampling: 4e8 draws of
N(0, I_8) by ``benchmarks/stress_truth.py``, kept here with its Clopper-Pearson
interval. The network is retrained deterministically (one thread, its own generator)
and checked against recorded outputs on fixed probes, so a rebuilt model is the one
the truth was computed for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import Tensor, nn

from .._logspace import binomial_log_ci, to_log10
from ..errors import InvalidArgumentError
from ..specs import OutputAbove
from .building import linear_layer, standard_normal, target_label
from .cases import Case

TRAINED_DIM = 8

#: margin thresholds, from benchmarks/stress_truth.py --calibrate 50000000 (another seed)
TRAINED_THRESHOLDS: dict[str, float] = {"1e-5": 50.84, "1e-6": 56.62}

#: output of benchmarks/stress_truth.py --draws 400000000 (781 s on one core): plain sampling
#: of N(0, I_8). 1e-5: log10 p = -5.0024, 95 % Clopper-Pearson (-5.0160, -4.9889);
#: 1e-6: log10 p = -6.0292, (-6.0744, -5.9852)
TRAINED_TRUTH: dict[str, dict[str, int]] = {
    "1e-5": {"hits": 3978, "draws": 400_000_000},
    "1e-6": {"hits": 374, "draws": 400_000_000},
}
TRAINED_TRUTH_SEED = 20_240_611

#: the margin network's outputs on trained_probes() when the truth was computed
TRAINED_PROBE_MARGINS: tuple[float, ...] = (
    7.383071025151397, 35.79768242110548, 27.19309729064089,
    34.77059488299459, 8.06310941122001, 4.764349196494186,
)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run on one CPU thread, restored afterwards: reductions in one fixed order (and faster
    for tiny matrices), so that training gives the same weights on any thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def trained_task(n: int = 2000, seed: int = 111) -> tuple[Tensor, Tensor]:
    """Inputs x ~ N(0, I_8) (n, 8) and labels (n,): 1 iff x0 x1 + sin(2 x2) + x3^2 / 2 - x4 / 2 > 1/2."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, TRAINED_DIM, generator=g, dtype=torch.float64)
    f = x[:, 0] * x[:, 1] + torch.sin(2 * x[:, 2]) + 0.5 * x[:, 3] ** 2 - 0.5 * x[:, 4]
    return x, (f > 0.5).long()


def _init_mlp(widths: tuple[int, ...], g: torch.Generator) -> nn.Sequential:
    """ReLU MLP in float64 with N(0, 1/fan_in) weights and zero biases."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        w = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64) / math.sqrt(fan_in)
        layers += [linear_layer(w, torch.zeros(fan_out, dtype=torch.float64)), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def train_classifier(seed: int = 112, steps: int = 300, lr: float = 1e-2) -> nn.Sequential:
    """8 -> 32 -> 32 -> 2 ReLU classifier, full-batch Adam in float64 on one thread (~2 s)."""
    x, y = trained_task()
    model = _init_mlp((TRAINED_DIM, 32, 32, 2), torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-3)
    with _one_thread():
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def margin_network(classifier: nn.Sequential) -> nn.Sequential:
    """The classifier with its last layer (2 logits) folded into one output, logit_1 - logit_0.

    Still Linear/ReLU only, so every estimator (moments included) can take it.
    """
    head = classifier[-1]
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        diff = linear_layer(head.weight[1:] - head.weight[:1], head.bias[1:] - head.bias[:1])
    return nn.Sequential(*list(classifier.children())[:-1], diff).requires_grad_(False).eval()


@lru_cache(maxsize=1)
def trained_margin() -> nn.Sequential:
    """The trained case's model, (n, 8) -> (n, 1) (cached: training takes seconds)."""
    return margin_network(train_classifier())


def trained_probes() -> Tensor:
    """Fixed inputs (6, 8) on which a rebuilt model must reproduce TRAINED_PROBE_MARGINS."""
    return 2.0 * torch.randn(6, TRAINED_DIM, generator=torch.Generator().manual_seed(113),
                             dtype=torch.float64)


def count_exceedances(model: nn.Module, thresholds: list[float], n: int, seed: int,
                      batch: int = 1 << 18, keep: int = 4096) -> tuple[list[int], Tensor]:
    """Hits of model(x) > t for each threshold among n draws of N(0, I_8), in float64 batches.

    Also returns the ``keep`` largest scores seen, descending (for calibrating thresholds).
    """
    g = torch.Generator().manual_seed(seed)
    hits = [0] * len(thresholds)
    top = torch.empty(0, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, n, batch):
            score = model(torch.randn(min(batch, n - start), TRAINED_DIM, generator=g,
                                      dtype=torch.float64))[:, 0]
            for i, t in enumerate(thresholds):
                hits[i] += int((score > t).sum())
            top = torch.cat([top, score]).topk(min(keep, len(top) + len(score))).values
    return hits, top


def trained_case(target_log10_p: float) -> Case:
    """The margin network above the threshold recorded for p ~ 10**target (1e-5 or 1e-6)."""
    key = target_label(target_log10_p)
    if key not in TRAINED_TRUTH:
        raise InvalidArgumentError(f"target_log10_p must be one of -5, -6 for the trained case, got {key}")
    hits, draws = TRAINED_TRUTH[key]["hits"], TRAINED_TRUTH[key]["draws"]
    low, high = binomial_log_ci(hits, draws, 0.95)
    source = (f"plain sampling: {hits} hits in {draws:,} draws, seed {TRAINED_TRUTH_SEED} "
              "(benchmarks/stress_truth.py), 95 % Clopper-Pearson")
    return Case(f"stress/trained-mlp8-{key}", "trained", trained_margin(), standard_normal(TRAINED_DIM),
                OutputAbove(0, TRAINED_THRESHOLDS[key]), math.log10(hits / draws),
                (to_log10(low), to_log10(high)), source)
