"""The gradient of a token model's score with respect to its one-hot input, whatever its embedding.

itgis, mhis and tsis tilt their proposals by g[n, i, v] = d s(x_n) / d onehot(x_n)[i, v]:
to first order, how much token v at position i would raise the score of context x_n.
One gradient, two routes to it, tried in this order by ``gradient_route``:

* ``OneHotRoute``: the model takes one-hot floats (n, ctx, vocab) as well as ids and
  gives the same outputs (its embedding written as ``one_hot @ weight``); autograd
  differentiates the one-hot input directly.
* ``EmbeddingRoute``: the model takes ids and looks them up in an ``nn.Embedding``, as
  every Hugging Face model does (also behind ``tailguard.lm.NextTokenLogits``). Where
  position i lands, the lookup outputs e_i = E[x_i], E the module's output for every
  token id (so a scaled embedding is handled too), and by the chain rule
  grad_onehot[i, v] = grad_e[i] . E[v]. For the one pass that needs it, a forward hook
  (``_gradient_leaves``, removed in ``finally``) hands the lookup's output on as a
  fresh leaf for autograd to differentiate; the values the model computes are unchanged.

Which lookups consume the ids, and at which column of their input (a chat template
puts a prefix before the message), a probe finds: two batches of ids that differ at
every position go through the model under recording hooks, and a (module, offset)
qualifies when its input holds each batch at that offset. A position embedding sees the
same input both times and never qualifies. Like ``unsupported_reason``, the probe checks
the model's interface (four rows, no gradient) outside the oracle and informs no estimate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from ..dists.base import Distribution
from ..dists.tokens import IndependentTokens
from ..errors import ModelOutputError, UnsupportedError
from ..oracle import ScoreOracle, eval_mode, model_dtype_device
from ..specs import Spec

_MODEL_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)
#: rows in each of the two probe batches that locate the embedding
PROBE_ROWS = 2
ADVICE = ("give the model one-hot float inputs (n, ctx, vocab) as well as token ids (its embedding "
          "written as one_hot @ weight), or let it look its ids up in an nn.Embedding")


class GradientRoute(Protocol):
    """A way to the scores' gradient with respect to the one-hot input, for one model."""

    name: ClassVar[str]

    def scores_and_gradient(self, oracle: ScoreOracle, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scores (n,) of ids x (n, ctx) and their one-hot gradients (n, ctx, vocab), float64 on the CPU.

        One forward and one backward pass: n model calls.
        """


@dataclass(frozen=True)
class OneHotRoute:
    """The model takes one-hot floats: differentiate them."""

    name: ClassVar[str] = "one-hot input"

    def scores_and_gradient(self, oracle: ScoreOracle, x: Tensor) -> tuple[Tensor, Tensor]:
        dist = oracle.dist
        assert isinstance(dist, IndependentTokens)
        one_hot = dist.one_hot(x, oracle.dtype).requires_grad_(True)
        with eval_mode(oracle.model), torch.enable_grad():
            s = oracle.scores_with_grad(one_hot)
            (grad,) = torch.autograd.grad(s.sum(), one_hot)
        return s.detach().cpu(), grad.detach().double().cpu()


@dataclass(frozen=True)
class EmbeddingSite:
    """A lookup module that receives the context's ids, from column ``offset`` of its input on."""

    module: nn.Module
    offset: int


@dataclass(frozen=True)
class EmbeddingRoute:
    """The model looks its ids up at ``sites``: contract the gradient at their outputs with the table."""

    sites: tuple[EmbeddingSite, ...]
    vocab: int
    name: ClassVar[str] = "embedding"

    def scores_and_gradient(self, oracle: ScoreOracle, x: Tensor) -> tuple[Tensor, Tensor]:
        n, ctx = x.shape
        tables = {site.module: _lookup_table(site.module, self.vocab) for site in self.sites}  # (vocab, d)
        with eval_mode(oracle.model), torch.enable_grad(), _gradient_leaves(self.sites, x) as leaves:
            s = oracle.scores_with_grad(x)
            if not leaves:
                raise ModelOutputError("the model no longer looks its token ids up in the embedding it "
                                       "used when probed")
            grads = torch.autograd.grad(s.sum(), [leaf for _, leaf in leaves], allow_unused=True)
        total = torch.zeros(n, ctx, self.vocab, dtype=torch.float64)
        for (site, _), grad in zip(leaves, grads, strict=True):
            if grad is not None:  # this lookup's output did not reach the score
                block = grad[:, site.offset : site.offset + ctx]  # (n, ctx, d)
                total += (block @ tables[site.module].T).double().cpu()
        return s.detach().cpu(), total


def _lookup_table(module: nn.Module, vocab: int) -> Tensor:
    """The module's output for every token id: (vocab, d), no gradient."""
    _, device = model_dtype_device(module)
    with torch.no_grad():
        return module(torch.arange(vocab, device=device)[None])[0]


def _holds(ids: Any, x: Tensor, offset: int) -> bool:
    """Whether the lookup input ``ids`` (n, L) holds the context ids x (n, ctx) at columns offset.."""
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point():
        return False
    n, ctx = x.shape
    if ids.shape[0] != n or ids.shape[1] < offset + ctx:
        return False
    return torch.equal(ids[:, offset : offset + ctx], x.to(ids.device))


@contextmanager
def _gradient_leaves(sites: tuple[EmbeddingSite, ...],
                     x: Tensor) -> Iterator[list[tuple[EmbeddingSite, Tensor]]]:
    """While open, a site's lookup that receives x outputs (a copy of) a fresh leaf with the same values."""
    leaves: list[tuple[EmbeddingSite, Tensor]] = []
    by_module: dict[nn.Module, list[EmbeddingSite]] = {}
    for site in sites:
        by_module.setdefault(site.module, []).append(site)

    def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        fed = [site for site in by_module[module] if args and _holds(args[0], x, site.offset)]
        if not fed:
            return None
        leaf = output.detach().requires_grad_(True)
        leaves.extend((site, leaf) for site in fed)
        return leaf.clone()  # a copy, so that the model may still change its embeddings in place

    handles = [module.register_forward_hook(hook) for module in by_module]
    try:
        yield leaves
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _recorded_lookups(model: nn.Module) -> Iterator[list[tuple[nn.Module, Tensor]]]:
    """While open, every nn.Embedding call of the model is recorded as (module, its input ids)."""
    calls: list[tuple[nn.Module, Tensor]] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args and isinstance(args[0], Tensor):
            calls.append((module, args[0].detach()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Embedding)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _sites_fed(model: nn.Module, ids: Tensor) -> list[EmbeddingSite] | str:
    """The (module, offset) pairs whose lookup receives ``ids`` (n, ctx) in a forward pass, in call order."""
    _, device = model_dtype_device(model)
    ids = ids.to(device)
    with eval_mode(model), torch.no_grad(), _recorded_lookups(model) as calls:
        try:
            model(ids)
        except _MODEL_ERRORS as exc:
            return f"the model failed on token ids of shape {tuple(ids.shape)} ({exc})"
    sites: list[EmbeddingSite] = []
    for module, inputs in calls:
        width = inputs.shape[-1] if inputs.dim() else 0
        for offset in range(max(width - ids.shape[1] + 1, 0)):
            site = EmbeddingSite(module, offset)
            if site not in sites and _holds(inputs, ids, offset):
                sites.append(site)
    return sites


def embedding_route(model: nn.Module, dist: IndependentTokens) -> EmbeddingRoute | str:
    """The lookups that consume the ids (probed with two batches that differ everywhere), or why none do."""
    if dist.vocab < 2:
        return "a one-token vocabulary leaves no token to tilt towards"
    g = torch.Generator().manual_seed(0)
    first = torch.randint(dist.vocab, (PROBE_ROWS, dist.ctx), generator=g)
    second = (first + torch.randint(1, dist.vocab, first.shape, generator=g)) % dist.vocab
    fed_first, fed_second = _sites_fed(model, first), _sites_fed(model, second)
    if isinstance(fed_first, str):
        return fed_first
    if isinstance(fed_second, str):
        return fed_second
    sites = [site for site in fed_first if site in fed_second]
    if not sites:
        return "no nn.Embedding of the model receives the input token ids"
    return EmbeddingRoute(tuple(sites), dist.vocab)


def one_hot_route(model: nn.Module, dist: IndependentTokens) -> OneHotRoute | str:
    """The one-hot route if the model gives the same, differentiable outputs on one-hot inputs as on ids."""
    dtype, device = model_dtype_device(model)
    ids = dist.log_probs().detach().argmax(1)[None].to(device)
    one_hot = dist.one_hot(ids, dtype).requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        try:
            with torch.no_grad():
                y_ids = model(ids)
            y_hot = model(one_hot)
        except _MODEL_ERRORS as exc:
            return f"the model failed on a one-hot input of shape {tuple(one_hot.shape)} ({exc})"
        if not isinstance(y_hot, Tensor) or not isinstance(y_ids, Tensor) or y_hot.shape != y_ids.shape:
            return "the model's output on one-hot inputs does not match its output on token ids"
        if not torch.allclose(y_hot.detach(), y_ids, rtol=1e-4, atol=1e-5):
            return "the model's outputs differ between one-hot inputs and the same token ids"
        grad = None
        if y_hot.requires_grad:
            (grad,) = torch.autograd.grad(y_hot.sum(), one_hot, allow_unused=True)
    if grad is None:
        return "the model's output carries no gradient to its one-hot input"
    return OneHotRoute()


def gradient_route(model: nn.Module, dist: IndependentTokens) -> GradientRoute | str:
    """The first route to the one-hot gradient that this model offers, or a sentence on why it offers none."""
    one_hot = one_hot_route(model, dist)
    if not isinstance(one_hot, str):
        return one_hot
    embedding = embedding_route(model, dist)
    if not isinstance(embedding, str):
        return embedding
    return f"{one_hot}, and {embedding}"


def token_input_problem(method: str, dist: Distribution, spec: Spec) -> str | None:
    """Why a token estimator that follows a graded score cannot take these inputs, or None."""
    if not isinstance(dist, IndependentTokens):
        return f"{method} needs IndependentTokens inputs, got {type(dist).__name__}"
    if not spec.continuous:
        return f"{type(spec).__name__} gives no graded score for {method} to follow"
    return None


def token_gradient_problem(method: str, model: nn.Module, dist: Distribution, spec: Spec) -> str | None:
    """Why an estimator that needs one-hot gradients of a graded score over tokens cannot run, or None."""
    problem = token_input_problem(method, dist, spec)
    if problem is not None or not isinstance(dist, IndependentTokens):
        return problem
    route = gradient_route(model, dist)
    return None if not isinstance(route, str) else _no_gradient(method, route)


def _no_gradient(method: str, reason: str) -> str:
    return (f"{method} needs the gradient of the score with respect to the one-hot input, which the model "
            f"does not give ({reason}); {ADVICE}")


def require_gradient_route(method: str, model: nn.Module, dist: Distribution) -> GradientRoute:
    """The route for a run that ``token_gradient_problem`` has cleared; UnsupportedError if there is none."""
    assert isinstance(dist, IndependentTokens)
    route = gradient_route(model, dist)
    if isinstance(route, str):
        raise UnsupportedError(_no_gradient(method, route))
    return route
