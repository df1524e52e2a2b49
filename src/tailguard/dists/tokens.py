"""Independent categorical tokens: the input distribution of a language model's context.

Wu & Hilton (2024), "Estimating the probabilities of rare outputs in language
models" (arXiv 2410.13211), draw each of the ``ctx`` context positions from its
own distribution over the vocabulary, independently. Inputs are LongTensors of
token ids (n, ctx). The MCMC move is a Gibbs update of a random subset of
positions, so splitting works on tokens exactly as it does on Gaussians.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidArgumentError, ShapeMismatchError
from ._checks import as_float_tensor
from .base import Distribution

#: how far a row of ``probs`` may sum from 1
SUM_TOLERANCE = 1e-6


class IndependentTokens(Distribution):
    """Position i holds token v with probability ``probs[i, v]``, independently of the others.

    ``probs``: (ctx, vocab), rows non-negative and summing to 1. It may require grad:
    ``log_prob`` then carries gradients to it. Samples are token ids, LongTensor (n, ctx).
    Models that take them also see one-hot encodings (n, ctx, vocab) of the model's float
    dtype from gradient-based estimators (``estimators._token_grad``); ``check_inputs``
    accepts both forms.
    """

    def __init__(self, probs: Tensor):
        p = as_float_tensor(probs, "probs")
        if p.dim() != 2 or p.shape[0] < 1 or p.shape[1] < 1:
            raise ShapeMismatchError(f"probs must have shape (ctx, vocab), got {tuple(p.shape)}")
        pd = p.detach().double()
        if (pd < 0).any():
            raise InvalidArgumentError(f"probs must be >= 0, got min {pd.min().item():.3g}")
        worst = (pd.sum(1) - 1.0).abs().max().item()
        if worst > SUM_TOLERANCE:
            raise InvalidArgumentError(
                f"each row of probs must sum to 1 (within {SUM_TOLERANCE:g}); one is off by {worst:.3g}"
            )
        self.probs = p
        self.event_shape = (p.shape[0],)

    @property
    def ctx(self) -> int:
        return self.probs.shape[0]

    @property
    def vocab(self) -> int:
        return self.probs.shape[1]

    @property
    def is_discrete(self) -> bool:
        return True

    def log_probs(self) -> Tensor:
        """log probs (ctx, vocab) in float64; -inf where a token is impossible."""
        return torch.log(self.probs.double())

    def one_hot(self, x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """Token ids (n, ctx) -> one-hot encodings (n, ctx, vocab) of ``dtype``."""
        self._check_ids(x)
        return torch.nn.functional.one_hot(x, self.vocab).to(dtype)

    # --- Distribution interface -------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n independent contexts, LongTensor (n, ctx)."""
        with torch.no_grad():
            if n == 0:
                return torch.zeros(0, self.ctx, dtype=torch.long)
            draws = torch.multinomial(self.probs.detach().double(), n, replacement=True, generator=generator)
            return draws.T.contiguous()

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-mass (n,): the sum over positions of log probs[i, x_i]."""
        self._check_ids(x)
        picked = self.log_probs().gather(1, x.T.long().to(self.probs.device))
        return picked.sum(0)

    def propose(self, x: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
        """Gibbs move: redraw a random subset of positions from their own categoricals.

        Each position joins the subset with probability ``step`` (n,), independently,
        and a row whose subset came out empty redraws one position chosen uniformly.
        The subset never depends on x, and given the subset the new tokens are drawn
        from D's conditional (which, positions being independent, is their marginal),
        so the kernel is reversible with respect to D.
        """
        self._check_ids(x)
        n = x.shape[0]
        with torch.no_grad():
            u = torch.rand(n, self.ctx, generator=generator, dtype=torch.float64)
            chosen = u < step.double()[:, None]
            forced = torch.randint(self.ctx, (n,), generator=generator)
            empty = ~chosen.any(1)
            chosen[empty, forced[empty]] = True
            fresh = self.sample(n, generator)
            return torch.where(chosen, fresh, x)

    def check_inputs(self, x: Tensor, name: str = "x") -> Tensor:
        """Accept token ids (n, ctx) or one-hot float encodings (n, ctx, vocab)."""
        if x.dim() == 3 and x.is_floating_point() and tuple(x.shape[1:]) == (self.ctx, self.vocab):
            return x
        return self._check_ids(x, name)

    def _check_ids(self, x: Tensor, name: str = "x") -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.ctx:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeMismatchError(
                f"{name} has shape {shape}; IndependentTokens expects token ids (n, {self.ctx})"
            )
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise InvalidArgumentError(f"{name} must hold integer token ids, got dtype {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab):
            raise InvalidArgumentError(
                f"{name} holds token ids outside [0, {self.vocab}): min {int(x.min())}, max {int(x.max())}"
            )
        return x

    def __repr__(self) -> str:
        return f"IndependentTokens(ctx={self.ctx}, vocab={self.vocab})"
