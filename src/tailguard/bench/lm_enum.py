"""Token estimators against exhaustive enumeration on small trained token models.

Cases: small next-character models under ``IndependentTokens`` distributions of several
shapes; the target is "the model's next token is t", for every t, with its exact
probability from enumeration. The scored targets are those with true p in
TARGET_BAND_LOG10, as in Wu & Hilton (2024), where plain sampling at the budget
almost always sees nothing. Two kinds of model (``KINDS``), each with its own results:

* ``transformer``: the in-project character transformers (``tasks.token_transformer``,
  12 symbols, 5 positions: 248,832 contexts), whose embedding is ``one_hot @ weight``.
* ``embedding``: ``EmbeddingMLP``, token and position ``nn.Embedding`` lookups, then an
  MLP to the logits (20 symbols, 5 positions: 3.2M contexts). It takes token ids only,
  as a Hugging Face model does, so the gradient estimators reach its one-hot gradient
  through its embedding; 20 symbols are more than tsis tries per position, so its
  search ranks the changes by that gradient.

Metrics per estimator: share of zero estimates, median |log10 error| (a zero counts
as infinitely wrong), the Itakura–Saito loss p/p_hat - log(p/p_hat) - 1 (the paper's
score: it punishes underestimates, zeros above all, far more than overestimates),
CI coverage and seconds.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import tailguard as tg

from ..dists.base import Distribution
from ..tasks.token_transformer import (
    CharVocab,
    build_vocab,
    descriptions_text,
    exact_target_log10,
    fit_next_token,
    train_token_transformer,
)

TARGET_BAND_LOG10 = (-9.0, -5.0)
BUDGET = 2**16
CTX = 5


class EmbeddingMLP(nn.Module):
    """Token ids (n, ctx) -> next-token logits (n, vocab): nn.Embedding lookups, then a two-layer MLP.

    Ids only (a one-hot float input fails in the lookup), like every Hugging Face model.
    """

    def __init__(self, vocab: int, ctx: int, d_model: int = 16, hidden: int = 64):
        super().__init__()
        self.ctx = ctx
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(ctx, d_model)
        self.mlp = nn.Sequential(nn.Linear(ctx * d_model, hidden), nn.GELU(), nn.Linear(hidden, vocab))

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(self.ctx, device=x.device).expand(x.shape[0], -1)
        return self.mlp((self.embed(x) + self.position(positions)).flatten(1))


def train_embedding_mlp(ctx: int, vocab: int, seed: int,
                        steps: int = 600) -> tuple[EmbeddingMLP, CharVocab, str]:
    """(model, vocabulary, training text): next-character prediction on the dataset descriptions."""
    text = descriptions_text()
    chars = build_vocab(text, vocab)
    windows = chars.encode(text).unfold(0, ctx + 1, 1)  # (m, ctx + 1)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return fit_next_token(EmbeddingMLP(vocab, ctx), windows, steps, g), chars, text


@dataclass(frozen=True)
class ModelKind:
    """One kind of model in the benchmark: how to train it, its vocabulary, the methods run, its files."""

    name: str
    train: Callable[[int, int, int], tuple[nn.Module, CharVocab, str]]  # (ctx, vocab, seed) -> ...
    vocab: int
    methods: tuple[str, ...]
    stem: str  # results go to {stem}.json, .md, .png


def _train_transformer(ctx: int, vocab: int, seed: int) -> tuple[nn.Module, CharVocab, str]:
    return train_token_transformer(ctx=ctx, vocab=vocab, seed=seed)


KINDS = {
    "transformer": ModelKind("transformer", _train_transformer, 12,
                             ("tsis", "itgis", "mhis", "splitting", "qld", "gld", "mc"), "enumerable"),
    "embedding": ModelKind("embedding", train_embedding_mlp, 20,
                           ("tsis", "itgis", "mhis", "auto", "splitting", "mc"), "enumerable_embedding"),
}


@dataclass(frozen=True)
class TokenCase:
    """A model, an input distribution and every target's exact log10 probability."""

    name: str
    model: nn.Module
    dist: Distribution  # IndependentTokens, or an LM-written D (bench.lm_written)
    exact_log10: Tensor  # (vocab,)

    def targets(self, band: tuple[float, float] = TARGET_BAND_LOG10) -> list[int]:
        low, high = band
        return [t for t, v in enumerate(self.exact_log10.tolist()) if low <= v <= high]


def input_distributions(unigram: Tensor, seeds: Iterable[int]) -> dict[str, Tensor]:
    """(CTX, vocab) probability tables: the text's unigram (vocab,) sharpened, and random peaked ones."""
    out: dict[str, Tensor] = {}
    for power in (2.0, 4.0):
        p = unigram.double() ** power
        out[f"unigram^{power:g}"] = (p / p.sum()).expand(CTX, -1).clone()
    for seed in seeds:
        g = torch.Generator().manual_seed(1000 + seed)
        for beta in (3.0, 4.5):
            z = torch.randn(CTX, unigram.numel(), generator=g, dtype=torch.float64)
            out[f"peaked{beta:g}/s{seed}"] = torch.softmax(beta * z, 1)
    return out


def build_cases(kind: ModelKind, model_seeds: Iterable[int] = (0, 1, 2), dist_seeds: Iterable[int] = (0, 1),
                on_case: Callable[[str], None] | None = None) -> list[TokenCase]:
    """Train each model of this kind, enumerate every input under every distribution."""
    cases = []
    for ms in model_seeds:
        model, chars, text = kind.train(CTX, kind.vocab, ms)
        for dname, probs in input_distributions(chars.unigram(text), dist_seeds).items():
            dist = tg.IndependentTokens(probs.float())
            exact = exact_target_log10(model, dist.log_probs())  # of the float32 table the estimators see
            name = f"{kind.name}/m{ms}/{dname}"
            cases.append(TokenCase(name, model, dist, exact))
            if on_case is not None:
                on_case(name)
    return cases


def itakura_saito(true_log10: float, est_log10: float) -> float:
    """p/p_hat - log(p/p_hat) - 1 (infinite for a zero estimate)."""
    if math.isinf(est_log10):
        return math.inf
    r = (true_log10 - est_log10) * math.log(10)
    if r > math.log(sys.float_info.max):  # an underestimate by more than ~308 decades
        return math.inf
    return math.exp(r) - r - 1.0


def run_case(case: TokenCase, target: int, method: str, seed: int, budget: int = BUDGET) -> dict[str, Any]:
    truth = float(case.exact_log10[target])
    start = time.perf_counter()
    est = tg.estimate(case.model, case.dist, tg.ClassIs(target), method=method, budget=budget, seed=seed)
    low, high = est.ci_log10
    return {
        "case": case.name, "target": target, "method": method, "seed": seed, "budget": budget,
        "true_log10_p": truth, "estimate_log10_p": est.log10_p, "ci_log10": [low, high],
        "covered": bool(low <= truth <= high), "zero": bool(math.isinf(est.log10_p)),
        "abs_log10_error": abs(est.log10_p - truth), "itakura_saito": itakura_saito(truth, est.log10_p),
        "model_calls": est.n_model_calls, "seconds": time.perf_counter() - start,
        "heuristic": est.heuristic, "trusted": est.trusted,
    }


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method in sorted({r["method"] for r in records}):
        rs = [r for r in records if r["method"] == method]
        errors = sorted(r["abs_log10_error"] for r in rs)
        losses = sorted(r["itakura_saito"] for r in rs)
        rows.append({
            "method": method, "runs": len(rs),
            "zero_fraction": sum(r["zero"] for r in rs) / len(rs),
            "median_abs_log10_error": errors[len(errors) // 2],
            "median_itakura_saito": losses[len(losses) // 2],
            "mean_itakura_saito": sum(losses) / len(losses),
            "coverage": sum(r["covered"] for r in rs) / len(rs),
            "trusted": sum(r["trusted"] for r in rs) / len(rs),
            "coverage_when_trusted": _share([r["covered"] for r in rs if r["trusted"]]),
            "median_ci_width_log10": _median([r["ci_log10"][1] - r["ci_log10"][0] for r in rs]),
            "median_seconds": _median([r["seconds"] for r in rs]),
            "heuristic": any(r["heuristic"] for r in rs),
        })
    return rows


def _share(flags: list[bool]) -> float | None:
    """The share of True among flags, None when there are none."""
    return sum(flags) / len(flags) if flags else None


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def kind_header(n_targets: int, n_cases: int, kind: ModelKind) -> str:
    """The title and set-up paragraph of one model kind's table."""
    low, high = TARGET_BAND_LOG10
    return (f"# Token estimators against exhaustive enumeration: {kind.name} models\n\n"
            f"{n_targets} targets with true p in [1e{low:g}, 1e{high:g}] over {n_cases} "
            f"(model, distribution) cases; {BUDGET:,} model calls per estimate; vocabulary {kind.vocab}, "
            f"context {CTX} ({kind.vocab**CTX:,} contexts).\n")


def markdown(summary: list[dict[str, Any]], header: str) -> str:
    """``header`` and one table row per method of the summary."""
    lines = [
        header,
        "| method | runs | zero estimates | median abs log10 error | median Itakura–Saito | "
        "mean Itakura–Saito | CI coverage | trusted | coverage when trusted | median CI width (decades) "
        "| median seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        name = r["method"] + (" (heuristic)" if r["heuristic"] else "")
        covered = r["coverage_when_trusted"]
        when_trusted = "–" if covered is None else f"{100 * covered:.0f} %"
        lines.append(
            f"| {name} | {r['runs']} | {100 * r['zero_fraction']:.0f} % | {r['median_abs_log10_error']:.2f} "
            f"| {r['median_itakura_saito']:.3g} | {r['mean_itakura_saito']:.3g} "
            f"| {100 * r['coverage']:.0f} % | {100 * r['trusted']:.0f} % | {when_trusted} "
            f"| {r['median_ci_width_log10']:.2f} | {r['median_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], path: Any, title: str,
         band: tuple[float, float] = TARGET_BAND_LOG10) -> None:
    """Estimate vs exact log10 p, one marker per method; zeros drawn at the bottom edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = band
    floor = low - 4
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for i, method in enumerate(sorted({r["method"] for r in records})):
        rs = [r for r in records if r["method"] == method]
        x = [r["true_log10_p"] for r in rs]
        y = [max(r["estimate_log10_p"], floor) for r in rs]
        ax.scatter(x, y, s=12, alpha=0.7, marker="osD^v"[i % 5], label=method)
    ax.plot([floor, 0], [floor, 0], "k--", lw=1)
    ax.set(xlim=(low - 0.5, high + 0.5), ylim=(floor - 0.2, high + 2), xlabel="exact log10 p",
           ylabel="estimated log10 p (zeros at the bottom)",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_benchmark(out: Path, quick: bool = False, progress: Callable[[str], None] | None = None,
                  kinds: Iterable[str] | None = None) -> dict[str, Path]:
    """Run each model kind in ``kinds``; the paths of the first kind's files, then the others' by kind.

    kinds: None for every kind, or for a quick run the transformer kind alone (enumerating
    the embedding kind's 3.2M contexts would take a smoke run a minute). quick: one model,
    the two unigram distributions, three targets.
    """
    if kinds is None:
        kinds = ("transformer",) if quick else tuple(KINDS)
    paths: dict[str, Path] = {}
    for name in kinds:
        if name not in KINDS:
            raise tg.InvalidArgumentError(f"unknown model kind {name!r}; choose from {', '.join(KINDS)}")
        written = run_kind(KINDS[name], out, quick, progress)
        paths.update(written if not paths else {f"{name} {key}": path for key, path in written.items()})
    return paths


def run_kind(kind: ModelKind, out: Path, quick: bool = False,
             progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Enumerate this kind's cases, run its methods on every in-band target, write json/md/png to ``out``."""
    say = progress or (lambda message: None)
    cases = build_cases(kind, model_seeds=(0,) if quick else (0, 1, 2), dist_seeds=() if quick else (0, 1),
                        on_case=lambda name: say(f"enumerated {name}"))
    work = [(c, t) for c in cases for t in c.targets()]
    if quick:
        work = work[:3]
    records = []
    for i, (case, target) in enumerate(work):
        for method in kind.methods:
            rec = run_case(case, target, method, seed=i)
            records.append(rec)
            say(f"[{i + 1}/{len(work)}] {case.name} t={target} {method}: true {rec['true_log10_p']:.2f}, "
                f"estimate {rec['estimate_log10_p']:.2f}")
    summary = summarise(records)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / f"{kind.stem}.{ext}" for key, ext in
             (("json", "json"), ("markdown", "md"), ("plot", "png"))}
    cases_exact = {c.name: c.exact_log10.tolist() for c in cases}
    paths["json"].write_text(json.dumps({"kind": kind.name, "summary": summary, "records": records,
                                         "cases": cases_exact}, indent=1, default=str))
    paths["markdown"].write_text(markdown(summary, kind_header(len(work), len(cases), kind))
                                 + f"\n![estimates vs exact]({paths['plot'].name})\n")
    plot(records, paths["plot"], f"{kind.name} models: token estimators at {BUDGET:,} calls vs enumeration")
    return paths
