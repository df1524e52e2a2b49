"""The search half of trigger-seeded importance sampling: find catastrophic token contexts.

``beam_search`` runs from D's mode and pilot draws on J_lam(x) = log p(x) + lam min(s(x), 0)
for several lam at once; ``expand_found`` scores the single-token neighbours of the
most probable triggers found. A ``TriggerSearch`` holds what they learn: every context
scored with s > 0 joins its ``FoundSet`` with its exact log-probability under D, no
context is pushed through the model twice, and its guide learns from every score.

The guide ranks single-token changes when the vocabulary is too large to try them all,
and gives tsis the direction of its tilted proposal: a first-order guess (ctx, vocab) of
how much each token at each position raises the score. ``GradientGuide`` takes it from
the score's gradient with respect to the one-hot input (``_token_grad``);
``ScoreEffects`` needs no gradient: it learns from the scores alone how much higher the
score was, on average, among the scored contexts that hold token v at position i.
See ``tsis`` for how the found set is used.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor

from ..dists.tokens import IndependentTokens
from ..oracle import ScoreOracle
from ._token_grad import GradientRoute

#: weights lam of the score in the search objectives J_lam(x) = log p(x) + lam min(s(x), 0)
SEARCH_LAMBDAS = (1.0, 4.0, 16.0, 64.0)
#: ``ScoreEffects`` shrinks a token's effect by count / (count + EFFECT_PRIOR_ROWS): few rows, little trust
EFFECT_PRIOR_ROWS = 4.0


class Guide(Protocol):
    """A first-order guess (ctx, vocab) of how much each token at each position raises the score."""

    path: str  # which guess, for the diagnostics

    def scores(self, oracle: ScoreOracle, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scores (n,) of ids x (n, ctx), learnt from, and this batch's guess (ctx, vocab); n model calls."""

    def gains(self, oracle: ScoreOracle, x: Tensor) -> Tensor:
        """The guess at each row of ids x (n, ctx): (n, ctx, vocab); model calls go through the oracle."""

    def observe(self, x: Tensor, s: Tensor) -> None:
        """Learn from scores s (n,) of ids x (n, ctx) paid for elsewhere."""


class GradientGuide:
    """The gradient of the score with respect to the one-hot input (costs a pass per row)."""

    def __init__(self, route: GradientRoute):
        self.route = route
        self.path = f"gradient ({route.name})"

    def scores(self, oracle: ScoreOracle, x: Tensor) -> tuple[Tensor, Tensor]:
        s, grad = self.route.scores_and_gradient(oracle, x)
        return s, grad.mean(0)

    def gains(self, oracle: ScoreOracle, x: Tensor) -> Tensor:
        return self.route.scores_and_gradient(oracle, x)[1]

    def observe(self, x: Tensor, s: Tensor) -> None:
        """The gradient is read afresh at each row: nothing to learn."""


class ScoreEffects:
    """Gradient-free guess: mean score of the scored rows holding token v at position i, minus the mean.

    Main effects of a linear fit of the score on one-hot features, shrunk towards 0 for
    tokens seen in few rows; it costs no model call, so a black-box model gets a guide too.
    """

    path = "gradient-free (score effects)"

    def __init__(self, ctx: int, vocab: int):
        self.sums = torch.zeros(ctx * vocab, dtype=torch.float64)
        self.counts = torch.zeros(ctx * vocab, dtype=torch.float64)
        self.shape = (ctx, vocab)

    def observe(self, x: Tensor, s: Tensor) -> None:
        cells = (x + self.shape[1] * torch.arange(self.shape[0])).reshape(-1)  # (n * ctx,) flat (i, v)
        self.sums.index_add_(0, cells, s.double()[:, None].expand(x.shape).reshape(-1))
        self.counts.index_add_(0, cells, torch.ones(cells.shape[0], dtype=torch.float64))

    def table(self) -> Tensor:
        """The guess (ctx, vocab); 0 for tokens never seen at a position."""
        rows = self.counts.reshape(self.shape).sum(1)[0]
        if rows == 0:
            return torch.zeros(self.shape, dtype=torch.float64)
        mean = self.sums.reshape(self.shape).sum(1)[0] / rows
        effect = self.sums / self.counts.clamp(min=1.0) - mean
        return (effect * self.counts / (self.counts + EFFECT_PRIOR_ROWS)).reshape(self.shape)

    def scores(self, oracle: ScoreOracle, x: Tensor) -> tuple[Tensor, Tensor]:
        s = oracle.scores(x)
        self.observe(x, s)
        return s, self.table()

    def gains(self, oracle: ScoreOracle, x: Tensor) -> Tensor:
        return self.table().expand(x.shape[0], -1, -1)


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


class TriggerSearch:
    """What the search knows: the triggers found, the score of every context it paid for, its guide.

    ``spent`` counts every model call made since it began (the guide's passes included).
    """

    def __init__(self, oracle: ScoreOracle, dist: IndependentTokens, guide: Guide, candidates: int):
        self.oracle, self.dist, self.guide, self.candidates = oracle, dist, guide, candidates
        self.log_p = dist.log_probs().detach()
        self.found = FoundSet(self.log_p)
        self._scores: dict[tuple[int, ...], float] = {}
        self._start = oracle.n_calls

    @property
    def spent(self) -> int:
        return self.oracle.n_calls - self._start

    def score(self, x: Tensor) -> Tensor:
        """Scores (n,) of contexts x (n, ctx); the found set, the cache and the guide all take them in."""
        s = self.oracle.scores(x)
        self._scores.update(zip(map(tuple, x.tolist()), s.tolist(), strict=True))
        self.found.add(x, s)
        self.guide.observe(x, s)
        return s

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(known rows, their scores, distinct unknown rows) of x (m, ctx)."""
        rows = [tuple(r) for r in x.tolist()]
        known = [i for i, r in enumerate(rows) if r in self._scores]
        unknown = [i for i in _first_occurrences(rows) if rows[i] not in self._scores]
        scores = torch.tensor([self._scores[rows[i]] for i in known], dtype=torch.float64)
        return x[torch.tensor(known, dtype=torch.long)], scores, x[torch.tensor(unknown, dtype=torch.long)]

    def neighbours(self, states: Tensor, lam: Tensor) -> Tensor:
        """Single-token changes (m, ctx) of each state (R, ctx), at most ``candidates`` per position.

        When the vocabulary has more tokens than that, the changes are ranked by their
        first-order gain in J_lam (lam (R,) per state) under the guide.
        """
        n_states, ctx = states.shape
        vocab = self.dist.vocab
        if vocab - 1 <= self.candidates:
            tokens = torch.arange(vocab).expand(n_states, ctx, vocab)
        else:
            gain = self.log_p[None] + lam[:, None, None] * self.guide.gains(self.oracle, states)
            gain = gain.scatter(2, states[:, :, None], -math.inf)  # constant terms of J dropped
            tokens = gain.topk(self.candidates, dim=2).indices
        n_tokens = tokens.shape[2]
        rows = states[:, None, None, :].expand(n_states, ctx, n_tokens, ctx).clone()
        position = torch.arange(ctx)[None, :, None].expand(n_states, ctx, n_tokens)
        rows.scatter_(3, position[..., None], tokens[..., None])
        rows = rows.reshape(-1, ctx)
        owner = torch.arange(n_states).repeat_interleave(ctx * n_tokens)
        changed = (rows != states[owner]).any(1)
        possible = torch.isfinite(self.log_p.gather(1, rows.T).sum(0))
        return rows[changed & possible]


def beam_search(search: TriggerSearch, budget: int, beam_width: int, generator: torch.Generator) -> None:
    """Beam search on J_lam = log p + lam min(s, 0) for several lam at once, while search.spent allows.

    The beam keeps, for each lam in SEARCH_LAMBDAS, the best ``beam_width // len(SEARCH_LAMBDAS)``
    distinct contexts among the beam and all their single-token changes: small lam
    keeps the contexts D makes likely, large lam those closest to a catastrophe, and
    the groups in between follow the trade-off, so the beam can reach a trigger that
    needs two rare tokens through either one first. When the beam stops changing it
    restarts from fresh starting points (also when a step met no context it had not
    scored, which is how a beam cycling between two sets ends). Contexts are scored
    once each. The guide's passes (ranking the changes of a large vocabulary) may
    overrun ``budget`` by one beam.
    """
    n_pilot = min(max(budget // 4, beam_width), budget - 1)
    if n_pilot < beam_width:
        return
    pilot = search.dist.sample(n_pilot, generator)
    queue, queue_scores = _starting_points(search, pilot, search.score(pilot))
    lambdas = torch.tensor(SEARCH_LAMBDAS, dtype=torch.float64)
    per_group = max(beam_width // len(SEARCH_LAMBDAS), 1)
    next_start = beam_width
    beam, beam_scores = queue[:next_start], queue_scores[:next_start]
    while search.spent < budget:
        rows = search.neighbours(beam, lambdas.repeat_interleave(per_group)[: beam.shape[0]])
        known, known_scores, fresh = search.split(rows)
        if search.spent + fresh.shape[0] > budget:
            break
        fresh_scores = search.score(fresh)
        pool = torch.cat([beam, known, fresh])
        pool_scores = torch.cat([beam_scores, known_scores, fresh_scores])
        pool, unique_index = _distinct(pool)
        pool_scores = pool_scores[unique_index]
        log_mass = search.log_p.gather(1, pool.T).sum(0)
        objective = log_mass[None] + lambdas[:, None] * pool_scores.clamp(max=0.0)
        chosen = _pick_per_group(objective, per_group)
        if fresh.shape[0] == 0 or _same_rows(pool[chosen], beam):  # converged (or cycling)
            if next_start >= queue.shape[0]:
                break
            starts = torch.arange(next_start, min(next_start + beam_width, queue.shape[0]))
            next_start += beam_width
            beam, beam_scores = queue[starts], queue_scores[starts]
            continue
        beam, beam_scores = pool[chosen], pool_scores[chosen]


def expand_found(search: TriggerSearch, budget: int, width: int) -> None:
    """Score the single-token changes of the ``width`` most probable found triggers, again and again.

    Whatever of P[C] the beam left out is most likely next to the triggers it found;
    each round scores the unscored neighbours of the most probable triggers not yet
    expanded, until a round finds nothing new or search.spent would pass ``budget``.
    """
    expanded: set[tuple[int, ...]] = set()
    while search.spent < budget:
        triggers, _ = search.found.top(len(search.found))
        todo = [row for row in triggers.tolist() if tuple(row) not in expanded][:width]
        if not todo:
            return
        states = torch.tensor(todo, dtype=torch.long)
        rows = search.neighbours(states, torch.full((len(todo),), SEARCH_LAMBDAS[-1], dtype=torch.float64))
        _, _, fresh = search.split(rows)
        if search.spent + fresh.shape[0] > budget:
            return
        expanded.update(map(tuple, todo))
        if fresh.shape[0]:
            search.score(fresh)


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


def _starting_points(search: TriggerSearch, pilot: Tensor, pilot_scores: Tensor) -> tuple[Tensor, Tensor]:
    """D's most probable context, then pilot draws alternately by score and as drawn: ids and scores.

    The best-scoring draws start close to the catastrophe region but are often improbable;
    draws in their drawn order are typical of D, from where the climb buys the fewest rare
    tokens; the mode is the most typical start of all (costs one call).
    """
    mode = search.log_p.argmax(1)[None]
    by_score = pilot_scores.argsort(descending=True)
    as_drawn = torch.arange(pilot.shape[0])
    order = torch.stack([by_score, as_drawn], 1).reshape(-1)
    order = order[torch.tensor(_first_occurrences(order.tolist()), dtype=torch.long)]
    return torch.cat([mode, pilot[order]]), torch.cat([search.score(mode), pilot_scores[order]])


def _first_occurrences(items: list[Any]) -> list[int]:
    """Positions of the first occurrence of each distinct item, in order."""
    seen: set[Any] = set()
    keep = []
    for position, item in enumerate(items):
        if item not in seen:
            seen.add(item)
            keep.append(position)
    return keep
