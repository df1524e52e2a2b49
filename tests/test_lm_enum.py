"""Enumerable token cases: the in-project transformer, exact target probabilities, the metrics."""

import json
import math

import pytest
import torch

import tailguard as tg
from tailguard.bench import lm_enum
from tailguard.tasks.token_transformer import TokenTransformer, exact_target_log10, train_token_transformer

pytest.importorskip("sklearn")


def test_ids_and_one_hots_give_the_same_logits():
    torch.manual_seed(0)
    model = TokenTransformer(vocab=7, ctx=3).eval()
    x = torch.randint(7, (5, 3))
    one_hot = torch.nn.functional.one_hot(x, 7).float()
    assert torch.allclose(model(x), model(one_hot), atol=1e-6)
    assert model.residual(x).shape == (5, 32)
    with pytest.raises(tg.ShapeMismatchError):
        model(torch.randint(7, (5, 4)))


def test_enumeration_matches_brute_force_and_sums_to_one():
    model, chars, text = train_token_transformer(ctx=2, vocab=12, seed=0, steps=30)
    probs = torch.softmax(3.0 * torch.randn(2, 12, generator=torch.Generator().manual_seed(1),
                                            dtype=torch.float64), 1)
    exact = exact_target_log10(model, torch.log(probs), batch=50)  # several batches
    xs = torch.cartesian_prod(torch.arange(12), torch.arange(12))
    with torch.no_grad():
        top = model(xs).argmax(1)
    mass = probs[0][xs[:, 0]] * probs[1][xs[:, 1]]
    for t in range(12):
        expected = float(mass[top == t].sum())
        assert (math.isinf(exact[t]) and expected == 0) or math.isclose(10 ** float(exact[t]), expected,
                                                                        rel_tol=1e-9)
    assert math.isclose(float(torch.sum(10**exact)), 1.0, rel_tol=1e-9)
    assert len(chars.chars) == 11 and chars.encode(text[:50]).max() < 12


def test_itakura_saito_punishes_underestimates_and_zeros():
    assert lm_enum.itakura_saito(-6.0, -6.0) == 0.0
    assert lm_enum.itakura_saito(-6.0, -7.0) > lm_enum.itakura_saito(-6.0, -5.0) > 0
    assert math.isinf(lm_enum.itakura_saito(-6.0, -math.inf))
    assert math.isinf(lm_enum.itakura_saito(-6.0, -400.0))  # too far below to compute, not an error


def test_gld_runs_on_tokens_and_flags_itself_heuristic():
    model, _, _ = train_token_transformer(ctx=3, vocab=12, seed=0, steps=30)
    dist = tg.IndependentTokens(torch.full((3, 12), 1 / 12))
    est = tg.estimate(model, dist, tg.ClassIs(0), method="gld", budget=2000, seed=0)
    assert est.heuristic and est.n_model_calls == 2000 and math.isfinite(est.log10_p)
    low, high = est.ci_log10
    assert low <= est.log10_p <= high


def test_quick_benchmark_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from tailguard.cli import app

    result = CliRunner().invoke(app, ["bench", "lm", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("enumerable.json", "enumerable.md", "enumerable.png"):
        assert (tmp_path / "lm" / "quick" / name).is_file()
    assert "itgis" in (tmp_path / "lm" / "quick" / "enumerable.md").read_text()


def test_the_embedding_kind_takes_ids_only_and_runs_end_to_end(tmp_path):
    model, chars, _ = lm_enum.train_embedding_mlp(ctx=lm_enum.CTX, vocab=6, seed=0, steps=30)
    ids = torch.randint(6, (4, lm_enum.CTX))
    assert model(ids).shape == (4, 6) and chars.size == 6
    with pytest.raises(RuntimeError):  # an nn.Embedding lookup takes no one-hot floats
        model(torch.nn.functional.one_hot(ids, 6).float())

    def train(ctx, vocab, seed):
        return lm_enum.train_embedding_mlp(ctx, vocab, seed, steps=30)

    kind = lm_enum.ModelKind("tiny", train, 6, ("tsis", "auto"), "tiny")
    paths = lm_enum.run_kind(kind, tmp_path, quick=True)
    records = json.loads(paths["json"].read_text())["records"]
    assert records and {r["method"] for r in records} == {"tsis", "auto"}
    assert all(abs(r["estimate_log10_p"] - r["true_log10_p"]) < 0.1 for r in records)
    assert "tiny models" in paths["markdown"].read_text() and paths["plot"].is_file()
