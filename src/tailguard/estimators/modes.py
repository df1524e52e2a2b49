"""Find the failure modes before estimating: the most probable catastrophic inputs.

Adaptive estimators only see the failure regions that their levels lead them to. A
region whose score rises slowly, or that lies near one data point among thousands, can
carry most of the probability and still be missed, with healthy-looking weights. So the
search for where failures are is done first, and on its own terms: many chains, each
tied to a centre of D (the origin of whitened coordinates for a Gaussian D, each data
point for a noisy empirical D), look for the catastrophic input nearest to their centre
in D's own units, that is, the most probable catastrophic input of that piece of D.

Each chain linearises the score where it is and steps towards the linearised failure
set, aimed a little inside it: from outside, to its nearest point (a Newton step that
keeps the conditions already met); from inside, towards its point nearest the centre
(the Hasofer-Lind-Rackwitz-Fiessler step of FORM's design-point search; Rackwitz &
Fiessler 1978, Zhang & Der Kiureghian 1995). The step uses only the ratio of the score to its gradient, so
it does not care how the score is scaled, which is what defeats level-following
methods when two regions have scores of very different scales. Chains start at
several radii around their centre (overdispersed starts reach regions whose gradient
at D's typical inputs points elsewhere); a chain whose gradient always vanishes gives
no mode.
Every catastrophic point a chain visits is a candidate; the most probable one per chain
is then pulled towards its centre by bisection along the ray between them, and these end points
are grouped into modes by centre and direction.

For a noisy empirical D with more data points than the budget can follow, every point
is screened first with one gradient evaluation (the linearised distance to failure,
-s / |grad s| in noise units) and chains follow the closest ones.

The modes seed the importance-sampling proposal (one component per mode) and appear in
its diagnostics. The search itself estimates nothing: it only says where to look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..oracle import ScoreOracle, eval_mode
from ._space import BaseSpace

#: radii (in D's standard deviations) at which chains start around their centre
START_RADII = (1.0, 2.0, 3.0, 4.5)
#: damped HLRF steps per chain
STEPS = 12
#: step damping: the fraction of the way to the linearised target taken per step
DAMPING = 0.7
#: how far inside the linearised failure set a step aims, in D's standard deviations
OVERSHOOT = 0.02
#: end points of one centre whose directions have a cosine above this form one mode
SAME_DIRECTION = 0.95
#: bisection steps along the ray from a chain's centre to its best point
RAY_STEPS = 8
#: radii (in D's standard deviations) at which a start's ray is probed for a first failure
PROBE_RADII = (*START_RADII, 6.5, 9.0)
#: bisection steps that place a start on the first failure along its ray
CROSSING_STEPS = 4
#: model calls of one chain: ray probes, crossing, steps, pull back
CALLS_PER_CHAIN = len(PROBE_RADII) + CROSSING_STEPS + STEPS + 1 + RAY_STEPS
#: modes this many nats less probable than the best (a factor 2.2e4) carry too little
#: probability to shape a proposal; most are chains that stopped short of a better mode
RELEVANT_NATS = 10.0


@dataclass(frozen=True)
class FailureMode:
    """A catastrophic input found by the search.

    z: base coordinates (d,); x: the input (*event_shape); centre: which piece of D it
    belongs to; log_density: ln p_D(z) in base coordinates; chains: how many chains ended here.
    """

    z: Tensor
    x: Tensor
    centre: int
    log_density: float
    score: float
    chains: int


@dataclass(frozen=True)
class ModeSearch:
    """The modes found (most probable first), and what the search cost.

    catastrophic_chains counts every chain that saw a catastrophic input, also those on a
    plateau of the score that give no mode.
    """

    modes: tuple[FailureMode, ...]
    model_calls: int
    chains: int
    catastrophic_chains: int
    gradient_free: bool

    def relevant(self) -> tuple[FailureMode, ...]:
        """The modes within RELEVANT_NATS of the most probable one."""
        if not self.modes:
            return ()
        best = self.modes[0].log_density
        return tuple(m for m in self.modes if m.log_density >= best - RELEVANT_NATS)

    def diagnostics(self) -> dict[str, Any]:
        return {
            "n_modes": len(self.modes),
            "n_relevant_modes": len(self.relevant()),
            "mode_log10_density": [round(m.log_density / math.log(10), 3) for m in self.modes[:8]],
            "mode_search_calls": self.model_calls,
            "mode_search_chains": self.chains,
            "mode_search_catastrophic_chains": self.catastrophic_chains,
            "mode_search_gradient_free": self.gradient_free,
        }


def search(oracle: ScoreOracle, space: BaseSpace, budget: int, generator: torch.Generator,
           max_modes: int = 32) -> ModeSearch:
    """Chains of design-point steps within ``budget`` model calls; their catastrophic end points as modes."""
    start_calls = oracle.n_calls
    centres = space.centres()
    per_chain = CALLS_PER_CHAIN
    screen = min(centres.shape[0], budget - 8 * per_chain) if centres.shape[0] > 1 else 0
    n_chains = max(1, min(256, (budget - screen) // per_chain))
    chain_centre = _chain_centres(oracle, space, centres, n_chains, screen, generator)
    n_chains = chain_centre.shape[0]
    u = _starts(chain_centre, centres.shape[1], generator, on_centre=centres.shape[0] > 1)
    u = _first_crossings(oracle, space, centres[chain_centre], u)
    best_z = torch.zeros_like(u)
    best_log_p = torch.full((n_chains,), -math.inf, dtype=torch.float64)
    best_s = torch.zeros(n_chains, dtype=torch.float64)
    gradient_free = False
    moved = torch.zeros(n_chains, dtype=torch.bool)
    for _ in range(STEPS + 1):
        z = centres[chain_centre] + u
        s, grad = _score_and_grad(oracle, space, z)
        gradient_free = gradient_free or grad is None
        log_p = space.base_log_prob(z)
        better = (s > 0) & (log_p > best_log_p)
        best_z[better], best_log_p[better], best_s[better] = z[better], log_p[better], s[better]
        if grad is None or oracle.n_calls - start_calls + n_chains * (1 + RAY_STEPS) > budget:
            break
        moved |= (grad != 0).any(1)
        u = _step(u, s, grad)
    # a chain that never had a gradient (a plateau of the score) only holds a random
    # catastrophic start, far from the most probable ones: a poor seed for a proposal
    catastrophic = int(torch.isfinite(best_log_p).sum())
    found = torch.isfinite(best_log_p) & moved
    if bool(found.any()):
        base = centres[chain_centre[found]]
        best_z[found], best_s[found] = _pull_towards_centre(oracle, space, base, best_z[found], best_s[found])
        best_log_p[found] = space.base_log_prob(best_z[found])
    modes = _group(space, best_z[found], chain_centre[found], best_log_p[found], best_s[found], max_modes)
    return ModeSearch(modes, oracle.n_calls - start_calls, n_chains, catastrophic, gradient_free)


def _starts(chain_centre: Tensor, d: int, generator: torch.Generator, on_centre: bool) -> Tensor:
    """Start offsets (n_chains, d) from each chain's centre, at START_RADII in random directions.

    With ``on_centre`` (a D of many pieces, most of them followed by one chain) a
    centre's first chain starts on it, as FORM's design-point search does: from there
    the first step follows the score's gradient at the data point, which most often
    leads to that point's most probable failure; one random overdispersed start per
    point missed points carrying a fifth of p on the digits case. Further chains of
    the same centre start at START_RADII. A single centre has many chains, and there
    the overdispersed starts are what reach regions whose gradient at the centre
    points elsewhere, so every chain starts at START_RADII in turn.
    """
    n_chains = chain_centre.shape[0]
    if not on_centre:
        radii = torch.tensor(START_RADII, dtype=torch.float64)[torch.arange(n_chains) % len(START_RADII)]
    else:
        order = torch.argsort(chain_centre, stable=True)
        sorted_centre = chain_centre[order]
        first = torch.ones(n_chains, dtype=torch.bool)
        first[1:] = sorted_centre[1:] != sorted_centre[:-1]
        run_start = torch.cummax(torch.where(first, torch.arange(n_chains), 0), 0).values
        rank = torch.empty(n_chains, dtype=torch.long)
        rank[order] = torch.arange(n_chains) - run_start
        radii = torch.tensor(START_RADII, dtype=torch.float64)[(rank - 1).clamp_min(0) % len(START_RADII)]
        radii[rank == 0] = 0.0
    return radii[:, None] * torch.randn(n_chains, d, generator=generator, dtype=torch.float64)


def _first_crossings(oracle: ScoreOracle, space: BaseSpace, centre: Tensor, u: Tensor) -> Tensor:
    """Each start (n, d) moved to the first failure on its ray from the centre, where there is one.

    The ray through a start is probed at PROBE_RADII and the first crossing bracketed
    by bisection. Where failure regions have scores of very different scales, the
    linearised steps of a chain outside every region follow the branch of the score
    nearest zero, which need not lead to the region with the most mass; the first
    failure along a random direction does not depend on the scores' scales, and the
    region nearest the centre is crossed first by the largest share of directions
    (directional simulation, Bjerager 1988). Chains whose ray meets no failure
    keep their start; a start on the centre has no ray.
    """
    norm = u.norm(dim=1, keepdim=True)
    has_ray = norm[:, 0] > 0
    if not bool(has_ray.any()):
        return u
    direction = torch.where(has_ray[:, None], u / norm.clamp_min(1e-300), torch.zeros_like(u))
    radii = math.sqrt(u.shape[1]) * torch.tensor(PROBE_RADII, dtype=torch.float64)
    rows = torch.nonzero(has_ray)[:, 0]
    probes = centre[rows, None, :] + radii[None, :, None] * direction[rows, None, :]
    s = oracle.scores(space.to_x(probes.reshape(-1, u.shape[1]))).reshape(rows.numel(), len(PROBE_RADII))
    crossed = (s > 0).any(1)
    if not bool(crossed.any()):
        return u
    first = torch.argmax((s > 0).to(torch.int8), dim=1)[crossed]
    rows = rows[crossed]
    high = radii[first]
    low = torch.where(first > 0, radii[(first - 1).clamp_min(0)], torch.zeros_like(high))
    for _ in range(CROSSING_STEPS):
        mid = 0.5 * (low + high)
        hit = oracle.scores(space.to_x(centre[rows] + mid[:, None] * direction[rows])) > 0
        high, low = torch.where(hit, mid, high), torch.where(hit, low, mid)
    moved = u.clone()
    moved[rows] = high[:, None] * direction[rows]
    return moved


def _chain_centres(oracle: ScoreOracle, space: BaseSpace, centres: Tensor, n_chains: int,
                   screen_budget: int, generator: torch.Generator) -> Tensor:
    """The centre index of each chain (n_chains,): the one centre, or the most exposed data points.

    With several centres, each is screened by its linearised distance to failure
    -s / |grad s| (noise units); chains go to the closest, a few to random others.
    """
    k = centres.shape[0]
    if k == 1:
        return torch.zeros(n_chains, dtype=torch.long)
    screened = torch.randperm(k, generator=generator)[: max(1, min(k, screen_budget))]
    s, grad = _score_and_grad(oracle, space, centres[screened])
    if grad is None:
        distance = -s
    else:
        distance = torch.where(s > 0, torch.zeros_like(s), -s / grad.norm(dim=1).clamp_min(1e-300))
    order = screened[torch.argsort(distance)]
    n_close = max(1, (3 * n_chains) // 4)
    close = order[: min(n_close, order.numel())]
    others = screened[torch.randint(screened.numel(), (n_chains - close.numel(),), generator=generator)]
    return torch.cat([close, others])


def _score_and_grad(oracle: ScoreOracle, space: BaseSpace, z: Tensor) -> tuple[Tensor, Tensor | None]:
    """Scores (n,) at base coordinates z (n, d) and their gradient in z (n, d), or None if unavailable."""
    zg = z.detach().clone().requires_grad_(True)
    with torch.enable_grad(), eval_mode(oracle.model):
        s = oracle.scores_with_grad(space.to_x(zg))
        if not s.requires_grad:
            return s.detach(), None
        (grad,) = torch.autograd.grad(s.sum(), zg)
    return s.detach(), grad.detach()


def _step(u: Tensor, s: Tensor, grad: Tensor) -> Tensor:
    """One damped step of each chain towards the linearised failure set (n, d).

    Linearised, the set {s > tau} is a half-space {s + g.(v - u) > tau}, with tau =
    OVERSHOOT |g| (aiming a little inside). Outside the event a chain moves to the
    half-space's nearest point from where it is (a Newton step): that keeps what it
    already has, which matters when the score is a min over conditions (an AND). Inside,
    it moves towards the half-space's nearest point from the centre (the HLRF step of
    FORM): towards the most probable failure. Chains with no gradient stay.
    """
    norm2 = (grad**2).sum(1)
    ok = norm2 > 0
    tau = OVERSHOOT * torch.sqrt(norm2)
    safe = norm2.clamp_min(1e-300)
    towards_event = u + ((tau - s) / safe)[:, None] * grad
    from_centre = (((grad * u).sum(1) - s + tau) / safe)[:, None] * grad
    target = torch.where((s > 0)[:, None], from_centre, towards_event)
    return torch.where(ok[:, None], u + DAMPING * (target - u), u)


def _pull_towards_centre(oracle: ScoreOracle, space: BaseSpace, centre: Tensor, z: Tensor,
                         s: Tensor) -> tuple[Tensor, Tensor]:
    """Bisection on t in [0, 1] for the catastrophic point c + t (z - c) nearest the centre (m, d).

    Keeps the smallest t seen with a positive score; z itself (t = 1) is catastrophic.
    """
    low = torch.zeros(z.shape[0], dtype=torch.float64)
    high = torch.ones(z.shape[0], dtype=torch.float64)
    best_z, best_s = z.clone(), s.clone()
    for _ in range(RAY_STEPS):
        mid = 0.5 * (low + high)
        trial = centre + mid[:, None] * (z - centre)
        s_trial = oracle.scores(space.to_x(trial))
        hit = s_trial > 0
        best_z[hit], best_s[hit] = trial[hit], s_trial[hit]
        high = torch.where(hit, mid, high)
        low = torch.where(hit, low, mid)
    return best_z, best_s


def _group(space: BaseSpace, z: Tensor, centre: Tensor, log_p: Tensor, s: Tensor,
           max_modes: int) -> tuple[FailureMode, ...]:
    """Greedy grouping of end points (most probable first) by centre and direction.

    Each mode is led by its most probable end point; a later point joins the first mode
    of its centre whose leader points the same way.
    """
    centres = space.centres()
    leaders: list[int] = []
    directions: list[Tensor] = []
    chains: list[int] = []
    for i in torch.argsort(log_p, descending=True).tolist():
        offset = z[i] - centres[int(centre[i])]
        unit = offset / offset.norm().clamp_min(1e-12)
        for j, lead in enumerate(leaders):
            if int(centre[lead]) == int(centre[i]) and float(unit @ directions[j]) > SAME_DIRECTION:
                chains[j] += 1
                break
        else:
            if len(leaders) < max_modes:
                leaders.append(i)
                directions.append(unit)
                chains.append(1)
    with torch.no_grad():
        return tuple(
            FailureMode(z=z[i], x=space.to_x(z[i][None])[0], centre=int(centre[i]),
                        log_density=float(log_p[i]), score=float(s[i]), chains=n)
            for i, n in zip(leaders, chains, strict=True)
        )
