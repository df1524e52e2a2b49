"""The SmolLM2 attack-and-harden pipeline, run end to end on a tiny random Llama (no download)."""

import json

import pytest

from tailguard.bench import lm_real

from .test_lm_dist import tiny_llama

pytest.importorskip("peft")

VOCAB = 64


class CharChatTokenizer:
    """One token per character (its code modulo the vocabulary) and a plain-text chat template."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % VOCAB for c in text]}

    def decode(self, ids):
        return "".join(chr(32 + int(i) % 90) for i in ids)

    def convert_tokens_to_ids(self, token):
        return 0


def test_the_pipeline_measures_before_and_after_and_writes_its_report(tmp_path, monkeypatch):
    tiny = lambda cache_dir=None: (tiny_llama(VOCAB), CharChatTokenizer())  # noqa: E731
    monkeypatch.setattr(lm_real, "load_smollm2", tiny)
    monkeypatch.setattr(lm_real, "forbidden_ids", lambda tokenizer: [3, 7])
    sizes = lm_real.RealRunSizes.quick()
    results = lm_real.run(tmp_path, sizes, say=lambda message: None)
    names = {"deployment D", "adversary (prompted)", "adversary (fine-tuned)",
             "held-out attack prompt 1", "held-out attack prompt 2"}
    assert set(results["before"]) == names == set(results["after"])
    for row in [*results["before"].values(), *results["after"].values()]:
        low, high = row["ci_log10"]
        assert low <= row["log10"] <= high <= 0.0
    assert len(results["adversary_history"]) == sizes.adversary.steps
    assert [r["round"] for r in results["rounds"]] == list(range(1, sizes.rounds + 1))
    for r in results["rounds"]:
        assert len(r["policy_history"]) == sizes.policy.steps
        assert len(r["adversary_history"]) == sizes.adversary.steps
        assert r["adversary"]["messages"] == sizes.judge.messages
    assert "previous_adversary" in results["rounds"][1]
    fresh = results["verdict"]["fresh_adversary"]  # tg.harden's verdict, a fresh adversary against each
    for run in ("vs_original", "vs_hardened"):
        assert len(fresh[run]["history"]) == sizes.adversary.steps
    assert results["verdict"]["held_out_ordinary"]["after"] == results["after"]["deployment D"]
    assert results["kl_first_token_on_deployment"]["mean"] >= 0.0
    saved = json.loads((tmp_path / "real.json").read_text())
    assert saved["before"] == results["before"]
    report = (tmp_path / "real.md").read_text()
    assert "lowered by" in report and "ESS" in report and "fresh adversary" in report
    for run in ("policy-2", "judge-vs-original", "judge-vs-hardened"):
        assert (tmp_path / "checkpoints" / "harden" / run / "checkpoint.safetensors").is_file()
    assert (tmp_path / "real.png").is_file()
