"""Small transformers over a character vocabulary, small enough to enumerate every input.

Ground truth for token estimators: with ``vocab`` symbols and ``ctx`` positions there
are vocab^ctx contexts (16^6 = 16.8M by default), so the exact probability of every
target token under any ``IndependentTokens`` distribution is a sum over all of them.
The models are trained, in seconds, to predict the next character of the dataset
descriptions that ship with scikit-learn (English prose with numbers and markup),
lower-cased, on a vocabulary of the ``vocab - 1`` most frequent characters plus one
"other" symbol.

A model maps token ids (n, ctx) or one-hot floats (n, ctx, vocab) to next-token
logits (n, vocab); the embedding is ``one_hot @ weight`` so gradient-guided
estimators (itgis) can differentiate through the input. ``residual`` gives the
final residual stream (n, d_model), for estimators that extrapolate activations.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..errors import ShapeMismatchError, require_extra


@dataclass(frozen=True)
class CharVocab:
    """The ``size - 1`` most frequent characters of a text plus an "other" symbol (the last id)."""

    chars: str

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> Tensor:
        other = len(self.chars)
        index = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([index.get(c, other) for c in text], dtype=torch.long)

    def unigram(self, text: str) -> Tensor:
        """Frequencies (size,) of each symbol in ``text``."""
        counts = torch.bincount(self.encode(text), minlength=self.size).double()
        return counts / counts.sum()


def descriptions_text() -> str:
    """The scikit-learn dataset descriptions (.rst files shipped in the package), lower-cased."""
    descr = require_extra("sklearn.datasets.descr", "bench")
    folder = Path(str(getattr(descr, "__file__", ""))).parent
    files = sorted(folder.glob("*.rst"))
    if not files:
        raise FileNotFoundError(f"no .rst dataset descriptions under {folder}")
    return "\n".join(f.read_text(encoding="utf-8") for f in files).lower()


def build_vocab(text: str, size: int) -> CharVocab:
    common = [c for c, _ in Counter(text).most_common(size - 1)]
    return CharVocab("".join(common))


class TokenTransformer(nn.Module):
    """One or more pre-norm attention + MLP blocks over ctx positions; logits at the last one."""

    def __init__(self, vocab: int, ctx: int, d_model: int = 32, n_heads: int = 2, n_layers: int = 1):
        super().__init__()
        self.vocab, self.ctx = vocab, ctx
        self.embed = nn.Parameter(0.3 * torch.randn(vocab, d_model))
        self.position = nn.Parameter(0.1 * torch.randn(ctx, d_model))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True,
                                       norm_first=True)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab)

    def residual(self, x: Tensor) -> Tensor:
        """The final residual stream at the last position, after the final norm: (n, d_model)."""
        if x.dim() == 2 and not x.is_floating_point():
            one_hot = nn.functional.one_hot(x, self.vocab).to(self.embed.dtype)
        elif x.dim() == 3 and x.shape[2] == self.vocab:
            one_hot = x.to(self.embed.dtype)
        else:
            raise ShapeMismatchError(
                f"TokenTransformer takes ids (n, {self.ctx}) or one-hots (n, {self.ctx}, {self.vocab}), "
                f"got {tuple(x.shape)}"
            )
        if one_hot.shape[1] != self.ctx:
            raise ShapeMismatchError(f"TokenTransformer has ctx {self.ctx}, got {one_hot.shape[1]}")
        h = one_hot @ self.embed + self.position
        for block in self.blocks:
            h = block(h)
        return self.norm(h[:, -1])

    def forward(self, x: Tensor) -> Tensor:
        return self.unembed(self.residual(x))


def train_token_transformer(ctx: int = 6, vocab: int = 16, seed: int = 0, steps: int = 400,
                            d_model: int = 32, n_layers: int = 1) -> tuple[TokenTransformer, CharVocab, str]:
    """(model, vocabulary, training text): next-character prediction on the descriptions."""
    text = descriptions_text()
    chars = build_vocab(text, vocab)
    ids = chars.encode(text)
    windows = ids.unfold(0, ctx + 1, 1)  # (m, ctx + 1)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TokenTransformer(vocab, ctx, d_model=d_model, n_layers=n_layers)
    return fit_next_token(model, windows, steps, g), chars, text


M = TypeVar("M", bound=nn.Module)


def fit_next_token(model: M, windows: Tensor, steps: int, generator: torch.Generator) -> M:
    """Train ``model`` (ids (n, ctx) -> logits (n, vocab)) to predict each window's last token.

    windows: (m, ctx + 1) token ids. AdamW, batches of 256 drawn with ``generator``.
    Returns the model in eval mode.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        batch = windows[torch.randint(windows.shape[0], (256,), generator=generator)]
        loss = nn.functional.cross_entropy(model(batch[:, :-1]), batch[:, -1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def exact_target_log10(model: nn.Module, log_probs: Tensor, batch: int = 65_536) -> Tensor:
    """log10 P[argmax model(x) = t] for every token t (vocab,), summing over all vocab^ctx inputs.

    log_probs: (ctx, vocab) of an IndependentTokens distribution. Masses are summed in
    float64 per target, so probabilities far below 1e-12 are exact too.
    """
    ctx, vocab = log_probs.shape
    total = torch.full((vocab,), float("-inf"), dtype=torch.float64)
    n = vocab**ctx
    powers = vocab ** torch.arange(ctx - 1, -1, -1)
    with torch.no_grad():
        for start in range(0, n, batch):
            index = torch.arange(start, min(start + batch, n))
            x = (index[:, None] // powers) % vocab  # (b, ctx) in lexicographic order
            lp = log_probs.gather(1, x.T).sum(0)
            top = model(x).argmax(1)
            for t in torch.unique(top).tolist():
                total[t] = torch.logaddexp(total[t], torch.logsumexp(lp[top == t], 0))
    return total / torch.log(torch.tensor(10.0, dtype=torch.float64))
