"""harden: lowers the catastrophe rate on the planted trigger, resumes exactly, fails clearly."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.harden.checkpoint import FILE_NAME, load_checkpoint
from tailguard.harden.judge import figure_of

from ._toy_backdoor import flat_params, toy_task, trigger_model

FAST = dict(
    steps=6,
    extra_steps=0,
    pool_size=2,
    candidates=9,
    samples=32,
    eval_every=3,
    eval_budget=2_000,
    eval_method="mc",
    held_out=1,
    checkpoint_every=3,
    batch_size=32,
    judge_budget=2_000,
    judge_sampling_budget=2_000,
    judge_attack_budget=6_000,
    judge_attack_method="mc",
)


def harden_toy(**kwargs):
    """tg.harden on the toy backdoor task (the same data and family every time)."""
    train, family = toy_task()
    return tg.harden(trigger_model(), train=train, spec=tg.ClassIs(1), family=family, **kwargs)


def test_harden_removes_the_planted_trigger_and_reports():
    _, family = toy_task()
    before = tg.attack(trigger_model(), tg.ClassIs(1), family, budget=30_000, method="mc")
    assert before.estimate.log10_p > -0.1
    # the default final phase: after 40 steps, train on until a fresh search of the family meets the target
    # (distillation to the backdoored start slows the removal: 40 steps alone leave the trigger in place)
    res = harden_toy(
        seed=0,
        **{**FAST, "steps": 40, "eval_every": 20, "lr": 0.05, "extra_steps": 160, "check_every": 10},
    )
    after = tg.attack(res.model, tg.ClassIs(1), family, budget=30_000, method="mc")
    assert after.estimate.log10_p < -3
    done = len(res.report.steps)
    assert 40 < done < 200 and [e["step"] for e in res.report.evals] == [20, *range(40, done + 1, 10)]
    assert res.report.evals[-1]["family_check"]["met"] and not res.report.evals[1]["family_check"]["met"]
    trace = [s["adversary_log10_p"] for s in res.report.steps]
    assert max(trace) > -1 and trace[-1] < max(trace) - 2  # the adversary found it, then lost it
    assert res.report.model_calls > 0


def test_same_seed_gives_the_same_run():
    one = harden_toy(seed=3, **FAST)
    two = harden_toy(seed=3, **FAST)
    assert torch.equal(flat_params(one.model), flat_params(two.model))
    assert one.report.steps == two.report.steps


def test_resume_from_middle_matches_uninterrupted_run(tmp_path, monkeypatch):
    straight = harden_toy(seed=5, **FAST)
    ckpt = tmp_path / "run"
    from tailguard.harden.game import Game

    real_step = Game.loss
    calls = {"n": 0}

    def dying_step(self, step, generator):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed between checkpoints (after step 3's checkpoint)
        return real_step(self, step, generator)

    monkeypatch.setattr(Game, "loss", dying_step)
    with pytest.raises(KeyboardInterrupt):
        harden_toy(
            seed=5,
            checkpoint_dir=ckpt,
            **FAST,
        )
    monkeypatch.setattr(Game, "loss", real_step)
    resumed = harden_toy(
        seed=5,
        checkpoint_dir=ckpt,
        resume=True,
        **FAST,
    )
    assert torch.equal(flat_params(straight.model), flat_params(resumed.model))
    assert len(resumed.report.steps) == 6


def test_resume_with_other_config_and_corrupt_checkpoint_are_refused(tmp_path):
    ckpt = tmp_path / "run"
    harden_toy(
        seed=0,
        checkpoint_dir=ckpt,
        **FAST,
    )
    with pytest.raises(tg.InvalidArgumentError, match="different configuration"):
        harden_toy(
            seed=0,
            checkpoint_dir=ckpt,
            resume=True,
            **{**FAST, "lam": 2.0},
        )
    (ckpt / FILE_NAME).write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(tg.WeightsError, match="corrupt"):
        harden_toy(
            seed=0,
            checkpoint_dir=ckpt,
            resume=True,
            **FAST,
        )


def test_diverging_run_stops_with_a_clear_error_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "run"
    real_ce = nn.functional.cross_entropy
    calls = {"n": 0}

    def ce_that_blows_up(*args, **kwargs):
        calls["n"] += 1
        loss = real_ce(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(nn.functional, "cross_entropy", ce_that_blows_up)
    with pytest.raises(tg.TrainingDivergedError, match="step 4"):
        harden_toy(
            seed=0,
            checkpoint_dir=ckpt,
            **FAST,
        )
    _, meta = load_checkpoint(ckpt)
    assert meta["step"] == 3


def test_bad_input_is_named():
    train, family = toy_task()
    with pytest.raises(tg.ShapeMismatchError, match="family's are"):
        tg.harden(
            trigger_model(),
            train=(torch.zeros(5, 3, 3), torch.zeros(5)),
            spec=tg.ClassIs(1),
            family=family,
            **FAST,
        )
    with pytest.raises(tg.ShapeMismatchError, match="rows"):
        tg.harden(
            trigger_model(),
            train=(torch.zeros(5, 4, 4), torch.zeros(4)),
            spec=tg.ClassIs(1),
            family=family,
            **FAST,
        )
    with pytest.raises(tg.ShapeMismatchError, match="model failed"):
        tg.harden(nn.Linear(3, 2), train=train, spec=tg.ClassIs(1), family=family, **FAST)
    with pytest.raises(tg.ShapeMismatchError, match="only 2 outputs"):
        tg.harden(trigger_model(), train=train, spec=tg.ClassIs(4), family=family, **FAST)
    with pytest.raises(tg.InvalidArgumentError, match="no setting"):
        harden_toy(stepz=3)
    with pytest.raises(tg.InvalidArgumentError, match="needs checkpoint_dir"):
        harden_toy(resume=True, **FAST)



def test_report_saves_to_a_str_or_path_folder(tmp_path):
    report = tg.HardenReport(settings={}, constraint="any 2x2 patch", seed=0)
    report.steps.append({"step": 0, "task_loss": 0.5, "batch_accuracy": 1.0, "adversary_log10_p": -1.0})
    zero_hits = {"log10_p": -math.inf, "ci_log10": [-math.inf, -3.0], "method": "mc", "n_model_calls": 10}
    report.evals.append({"step": 1, "test_accuracy": 0.9, "held_out": [zero_hits], "deployment": zero_hits})
    for folder in (str(tmp_path / "as_str" / "nested"), tmp_path / "as_path"):
        paths = report.save(folder)
        assert {p.name for p in paths.values()} == {"report.json", "report.md", "report.png", "report.html",
                                                    "steps.jsonl"}
        assert all(p.is_file() and p.parent == Path(folder) for p in paths.values())
        assert tg.HardenReport.from_dict(json.loads(paths["json"].read_text())).evals == report.evals
    assert report.plot(str(tmp_path / "alone.png")).is_file()


def test_every_report_carries_an_independent_verdict_beside_the_training_judge():
    train, family = toy_task()
    res = harden_toy(seed=0, deployment=tg.NoisyEmpirical(train[0][:16], 0.05), **{**FAST, "steps": 40,
                                                                                      "lr": 0.05})
    v = res.report.verdict
    assert v["training_judge"] == "is" and v["independent_judges"] == ["splitting", "mc"]
    names = set(v["distributions"])
    assert {"training adversary's worst member", "held-out member 1", "deployment"} == names
    for row in v["distributions"].values():
        assert {"training", "splitting", "sampling", "verdict"} <= set(row)
        assert row["splitting"]["method"] == "splitting" and row["sampling"]["method"] == "mc"
        assert row["verdict"]["ci_log10"][1] <= row["sampling"]["ci_log10"][1]  # never above mc's exact bound
    attacks = v["attacks"]
    # the training family by two kinds of search, then the broader families
    assert [a["in_threat_model"] for a in attacks[:2]] == [True, True]
    assert not any(a["in_threat_model"] for a in attacks[2:])
    assert {"1x1 patches", "3x3 patches", "4x4 patches"} <= {a["family"] for a in attacks}
    assert v["worst_in_threat_model_log10_p"] == max(figure_of(a) for a in attacks[:2]) < -2  # trigger gone
    assert v["unresolved"] == [n for n, row in v["distributions"].items() if not row["verdict"]["resolved"]]
    assert v["disagreements"] == [n for n, row in v["distributions"].items() if not row["agree"]]
    markdown = res.report.markdown()
    assert "training judge (is)" in markdown and "Fresh attacks" in markdown
    assert tg.HardenReport.from_dict(json.loads(res.report.to_json())).verdict == v


def test_a_training_judge_that_misses_the_independent_one_is_flagged():
    from tailguard.harden.judge import overlap

    assert overlap([-5.0, -3.0], [-4.0, -2.0]) and overlap([-5.0, -3.0], [-3.0, -1.0])
    assert not overlap([-12.0, -10.0], [-4.0, -3.0]) and not overlap([-4.0, -3.0], [-12.0, -10.0])
    assert overlap([-math.inf, -4.0], [-6.0, -5.0])
