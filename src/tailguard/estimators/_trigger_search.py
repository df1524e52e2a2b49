"""The search half of trigger-seeded importance sampling: find catastrophic token contexts.

``beam_search`` runs from D's mode and pilot draws on J_lam(x) = log p(x) + lam min(s(x), 0)
for several lam at once; ``expand_found`` scores the single-token neighbours of the
most probable triggers found. Every context scored with s > 0 joins a ``FoundSet``
with its exact log-probability under D, and a ``ScoreCache`` makes sure no context
is pushed through the model twice. See ``tsis`` for how the found set is used.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..dists.tokens import IndependentTokens
from ..oracle import ScoreOracle
from .itgis import _scores_and_gradient

#: weights lam of the score in the search objectives J_lam(x) = log p(x) + lam min(s(x), 0)
SEARCH_LAMBDAS = (1.0, 4.0, 16.0, 64.0)


class FoundSet:
    """Distinct contexts known to be catastrophic, with their exact log-probabilities under D."""

    def __init__(self, log_p: Tensor):
        self.log_p = log_p
        self._log_masses: dict[tuple[int, ...], float] = {}

    def __len__(self) -> int:
        return len(self._log_masses)

    def add(self, x: Tensor, s: Tensor) -> None:
        """Record the rows of x (n, ctx) whose score s (n,) is > 0."""
        hits = x[s > 0]
        if hits.shape[0]:
            log_masses = self.log_p.gather(1, hits.T).sum(0).tolist()
            self._log_masses.update(zip(map(tuple, hits.tolist()), log_masses, strict=True))

    def contains(self, x: Tensor) -> Tensor:
        """Bool (n,): which rows are already in the set."""
        return torch.tensor([tuple(r) in self._log_masses for r in x.tolist()], dtype=torch.bool)

    def log_mass(self) -> float:
        """log p(S), -inf when empty."""
        if not self._log_masses:
            return -math.inf
        return float(torch.logsumexp(torch.tensor(list(self._log_masses.values()), dtype=torch.float64), 0))

    def top(self, k: int) -> tuple[Tensor, Tensor]:
        """The k most probable members as ids (m, ctx) and their log-probabilities (m,)."""
        ranked = sorted(self._log_masses.items(), key=lambda item: -item[1])[:k]
        ids = torch.tensor([row for row, _ in ranked], dtype=torch.long)
        ids = ids.reshape(len(ranked), self.log_p.shape[0])
        return ids, torch.tensor([lm for _, lm in ranked], dtype=torch.float64)


def beam_search(oracle: ScoreOracle, dist: IndependentTokens, found: FoundSet, cache: ScoreCache, budget: int,
                beam_width: int, candidates: int, generator: torch.Generator) -> int:
    """Beam search on J_lam = log p + lam min(s, 0) for several lam at once; returns calls spent.

    The beam keeps, for each lam in SEARCH_LAMBDAS, the best ``beam_width // len(SEARCH_LAMBDAS)``
    distinct contexts among the beam and all their single-token changes: small lam
    keeps the contexts D makes likely, large lam those closest to a catastrophe, and
    the groups in between follow the trade-off, so the beam can reach a trigger that
    needs two rare tokens through either one first. When the beam stops changing it
    restarts from fresh starting points (also when a step met no context it had not
    scored, which is how a beam cycling between two sets ends). Contexts are scored
    once each (a cache).
    """
    n_pilot = min(max(budget // 4, beam_width), budget - 1)
    if n_pilot < beam_width:
        return 0
    pilot = dist.sample(n_pilot, generator)
    pilot_scores = oracle.scores(pilot)
    cache.put(pilot, pilot_scores)
    found.add(pilot, pilot_scores)
    queue, queue_scores = _starting_points(oracle, dist, pilot, pilot_scores)
    spent = n_pilot + 1
    cache.put(queue[:1], queue_scores[:1])
    log_p = found.log_p
    lambdas = torch.tensor(SEARCH_LAMBDAS, dtype=torch.float64)
    per_group = max(beam_width // len(SEARCH_LAMBDAS), 1)
    next_start = beam_width
    beam, beam_scores = queue[:next_start], queue_scores[:next_start]
    while True:
        state_lambdas = lambdas.repeat_interleave(per_group)[: beam.shape[0]]
        rows = neighbours(oracle, dist, beam, state_lambdas, candidates)
        known, known_scores, fresh = cache.split(rows)
        if spent + fresh.shape[0] > budget:
            break
        fresh_scores = oracle.scores(fresh) if fresh.shape[0] else torch.zeros(0, dtype=torch.float64)
        spent += fresh.shape[0]
        cache.put(fresh, fresh_scores)
        found.add(fresh, fresh_scores)
        pool = torch.cat([beam, known, fresh])
        pool_scores = torch.cat([beam_scores, known_scores, fresh_scores])
        pool, unique_index = _distinct(pool)
        pool_scores = pool_scores[unique_index]
        objective = log_p.gather(1, pool.T).sum(0)[None] + lambdas[:, None] * pool_scores.clamp(max=0.0)
        chosen = _pick_per_group(objective, per_group)
        if fresh.shape[0] == 0 or _same_rows(pool[chosen], beam):  # converged (or cycling)
            if next_start >= queue.shape[0]:
                break
            starts = torch.arange(next_start, min(next_start + beam_width, queue.shape[0]))
            next_start += beam_width
            beam, beam_scores = queue[starts], queue_scores[starts]
            continue
        beam, beam_scores = pool[chosen], pool_scores[chosen]
    return spent


def expand_found(oracle: ScoreOracle, dist: IndependentTokens, found: FoundSet, cache: ScoreCache,
                 budget: int, width: int, candidates: int) -> int:
    """Score the single-token changes of the ``width`` most probable found triggers, again and again.

    Whatever of P[C] the beam left out is most likely next to the triggers it found;
    each round scores the unscored neighbours of the most probable triggers not yet
    expanded, until a round finds nothing new or the budget is spent. Returns calls spent.
    """
    spent = 0
    expanded: set[tuple[int, ...]] = set()
    while True:
        triggers, _ = found.top(len(found))
        todo = [row for row in triggers.tolist() if tuple(row) not in expanded][:width]
        if not todo:
            return spent
        states = torch.tensor(todo, dtype=torch.long)
        rows = neighbours(oracle, dist, states, torch.full((len(todo),), SEARCH_LAMBDAS[-1],
                                                             dtype=torch.float64), candidates)
        _, _, fresh = cache.split(rows)
        if spent + fresh.shape[0] > budget:
            return spent
        expanded.update(map(tuple, todo))
        if fresh.shape[0]:
            scores = oracle.scores(fresh)
            spent += fresh.shape[0]
            cache.put(fresh, scores)
            found.add(fresh, scores)


def _pick_per_group(objective: Tensor, per_group: int) -> Tensor:
    """Indices of up to ``per_group`` best pool rows for each lam (rows of objective (L, m)), distinct."""
    taken: list[int] = []
    for row in objective:
        order = row.argsort(descending=True).tolist()
        taken.extend([i for i in order if i not in taken][:per_group])
    return torch.tensor(taken, dtype=torch.long)


def _distinct(rows: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of (m, ctx) in order of first appearance, and their indices into ``rows``."""
    keep = torch.tensor(_first_occurrences([tuple(r) for r in rows.tolist()]), dtype=torch.long)
    return rows[keep], keep


def _same_rows(a: Tensor, b: Tensor) -> bool:
    return {tuple(r) for r in a.tolist()} == {tuple(r) for r in b.tolist()}


class ScoreCache:
    """Scores of contexts already pushed through the model, so a search never pays twice."""

    def __init__(self) -> None:
        self._scores: dict[tuple[int, ...], float] = {}

    def put(self, x: Tensor, s: Tensor) -> None:
        self._scores.update(zip(map(tuple, x.tolist()), s.tolist(), strict=True))

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(known rows, their scores, distinct unknown rows) of x (m, ctx)."""
        rows = [tuple(r) for r in x.tolist()]
        known = [i for i, r in enumerate(rows) if r in self._scores]
        unknown = [i for i in _first_occurrences(rows) if rows[i] not in self._scores]
        scores = torch.tensor([self._scores[rows[i]] for i in known], dtype=torch.float64)
        return x[torch.tensor(known, dtype=torch.long)], scores, x[torch.tensor(unknown, dtype=torch.long)]


def _starting_points(oracle: ScoreOracle, dist: IndependentTokens, pilot: Tensor,
                     pilot_scores: Tensor) -> tuple[Tensor, Tensor]:
    """D's most probable context, then pilot draws alternately by score and as drawn: ids and scores.

    The best-scoring draws start close to the catastrophe region but are often improbable;
    draws in their drawn order are typical of D, from where the climb buys the fewest rare
    tokens; the mode is the most typical start of all (costs one call).
    """
    mode = dist.log_probs().argmax(1)[None]
    by_score = pilot_scores.argsort(descending=True)
    as_drawn = torch.arange(pilot.shape[0])
    order = torch.stack([by_score, as_drawn], 1).reshape(-1)
    order = order[torch.tensor(_first_occurrences(order.tolist()), dtype=torch.long)]
    return torch.cat([mode, pilot[order]]), torch.cat([oracle.scores(mode), pilot_scores[order]])


def _first_occurrences(items: list[Any]) -> list[int]:
    """Positions of the first occurrence of each distinct item, in order."""
    seen: set[Any] = set()
    keep = []
    for position, item in enumerate(items):
        if item not in seen:
            seen.add(item)
            keep.append(position)
    return keep


def neighbours(oracle: ScoreOracle, dist: IndependentTokens, states: Tensor, lam: Tensor,
                candidates: int) -> Tensor:
    """Single-token changes (m, ctx) of each state (R, ctx), at most ``candidates`` per position."""
    n_states, ctx = states.shape
    vocab = dist.vocab
    if vocab - 1 <= candidates:
        tokens = torch.arange(vocab).expand(n_states, ctx, vocab)
    else:  # rank the changes by their first-order gain in J
        _, grad = _scores_and_gradient(oracle, dist, states)
        log_p = dist.log_probs().detach()
        gain = log_p[None] + lam[:, None, None] * grad  # constant terms of J dropped
        gain = gain.scatter(2, states[:, :, None], -math.inf)
        tokens = gain.topk(candidates, dim=2).indices
    n_tokens = tokens.shape[2]
    rows = states[:, None, None, :].expand(n_states, ctx, n_tokens, ctx).clone()
    position = torch.arange(ctx)[None, :, None].expand(n_states, ctx, n_tokens)
    rows.scatter_(3, position[..., None], tokens[..., None])
    rows = rows.reshape(-1, ctx)
    owner = torch.arange(n_states).repeat_interleave(ctx * n_tokens)
    changed = (rows != states[owner]).any(1)
    possible = torch.isfinite(dist.log_probs().gather(1, rows.T).sum(0))
    return rows[changed & possible]
