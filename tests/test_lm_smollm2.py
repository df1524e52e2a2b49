"""The SmolLM2 task's benchmark, run end to end on a tiny random Llama (no download)."""

import json
import math

import pytest
import torch

from tailguard.bench import lm_real, lm_smollm2

from .test_lm_dist import tiny_llama
from .test_lm_real import VOCAB, CharChatTokenizer


@pytest.fixture
def task(monkeypatch):
    monkeypatch.setattr(lm_real, "forbidden_ids", lambda tokenizer: [3, 7, 11])
    return lm_smollm2.build_task(tiny_llama(VOCAB), CharChatTokenizer(), length=4)


def test_the_truth_is_the_mean_chance_and_the_run_resumes(task, tmp_path):
    say = lambda message: None  # noqa: E731
    first = lm_smollm2.run(tmp_path, [0], 128, say=say, task=task, budget=400, below=1.0)
    assert first["choice"]["token_ids"] == [3, 7, 11]
    truth = first["truth"]
    assert truth["messages"] == 128 and truth["interval"] == "normal"
    low, high = truth["ci_log10"]
    assert low < truth["log10_p"] < high
    saved = json.loads((tmp_path / "smollm2_progress.json").read_text())
    # the saved chances are the policy's exact first-token mass on the chosen tokens, chunk by chunk
    x = task.users.sample(lm_smollm2.TRUTH_CHUNK, torch.Generator().manual_seed(lm_smollm2.TRUTH_SEED))
    again = lm_smollm2.first_token_mass(task, x, [3, 7, 11])
    first_chunk = torch.tensor(saved["truth_pi"][: lm_smollm2.TRUTH_CHUNK], dtype=torch.float64)
    assert torch.allclose(again, first_chunk)
    (est,) = first["estimates"]
    assert est["n_model_calls"] <= 400
    assert est["ci_log10"][0] <= truth["log10_p"] <= est["ci_log10"][1]
    # a second run with another seed and more truth keeps what the first one measured
    second = lm_smollm2.run(tmp_path, [0, 1], 512, say=say, task=task, budget=400, below=1.0)
    assert second["estimates"][0] == est and [r["seed"] for r in second["estimates"]] == [0, 1]
    progress = json.loads((tmp_path / "smollm2_progress.json").read_text())
    assert progress["truth_pi"][:128] == saved["truth_pi"] and len(progress["truth_pi"]) == 512
    assert len(second["plain_sampling"]) == 2
    for b in second["plain_sampling"]:
        assert b["messages"] == 200 and 0 <= b["hits"] <= 200
    assert [f["n"] for f in second["forecast"]] == [412] * 4
    assert all(math.isfinite(f["forecast_log10"]) and f["observed_log10"] <= 0 for f in second["forecast"])
    report = (tmp_path / "smollm2.md").read_text()
    assert "| 1 |" in report and "Gumbel-tail" in report and (tmp_path / "smollm2.png").is_file()
    (tmp_path / "smollm2.md").unlink()
    assert lm_smollm2.report(tmp_path) == json.loads(json.dumps(second))  # from the progress file alone
    assert (tmp_path / "smollm2.md").read_text() == report
