"""harden's final phase: it stops once a fresh search of the family meets the target, and not before."""

import torch

import tailguard as tg
from tailguard.harden.game import Game

from ._toy_backdoor import flat_params
from .test_harden import FAST, harden_toy

# the stopping rule alone (distillation, which slows the toy trigger's removal, off)
PHASE = {**FAST, "distill": 0.0, "steps": 4, "extra_steps": 60, "check_every": 6, "check_budget": 20_000,
         "lr": 0.05}


def checks(report):
    return [(ev["step"], ev["family_check"]) for ev in report.evals if "family_check" in ev]


def test_the_run_goes_on_until_the_family_check_meets_the_target_then_stops():
    res = harden_toy(seed=0, **PHASE)
    found = checks(res.report)
    assert found and [step for step, _ in found] == list(range(4, len(res.report.steps) + 1, 6))
    met = [c["met"] for _, c in found]
    last_step, last = found[-1]
    # it stopped at the second passing check in a row (checks_to_pass = 2), and not before
    assert met[-2:] == [True, True] and last_step == len(res.report.steps) < 64
    assert last["ci_log10"][1] <= -6.9 / 2.302585
    assert not any(a and b for a, b in zip(met[:-2], met[1:-1], strict=True))
    assert not met[0], "the trigger should survive the first 4 steps, so the phase had work to do"
    assert res.report.model_calls >= sum(c["n_model_calls"] for _, c in found)


def test_a_target_out_of_reach_runs_every_extra_step():
    res = harden_toy(seed=0, **{**PHASE, "extra_steps": 12, "lr": 1e-7})  # the trigger cannot go
    assert len(res.report.steps) == 16
    assert all(not c["met"] for _, c in checks(res.report)) and len(checks(res.report)) == 3


def test_a_resumed_run_stops_where_the_uninterrupted_one_did(tmp_path, monkeypatch):
    straight = harden_toy(seed=2, **PHASE)
    real_loss, calls = Game.loss, {"n": 0}

    def dying(self, step, generator):
        calls["n"] += 1
        if calls["n"] == len(straight.report.steps) - 1:
            raise KeyboardInterrupt
        return real_loss(self, step, generator)

    monkeypatch.setattr(Game, "loss", dying)
    try:
        harden_toy(seed=2, checkpoint_dir=tmp_path, **{**PHASE, "checkpoint_every": 2})
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(Game, "loss", real_loss)
    resumed = harden_toy(seed=2, checkpoint_dir=tmp_path, resume=True, **{**PHASE, "checkpoint_every": 2})
    assert len(resumed.report.steps) == len(straight.report.steps)
    assert torch.equal(flat_params(resumed.model), flat_params(straight.model))
    assert checks(resumed.report) == checks(straight.report)


def test_bad_final_phase_settings_are_named():
    for bad, message in (({"extra_steps": -1}, "extra_steps"), ({"check_every": 0}, "check_every"),
                         ({"family_target": float("nan")}, "family_target"), ({"check_budget": 10}, "budget"),
                         ({"check_budget": 12_000}, "check_budget 12,000 leaves 3,600 draws")):
        try:
            harden_toy(**{**FAST, **bad})
        except (tg.InvalidArgumentError, tg.BudgetError) as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
