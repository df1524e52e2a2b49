"""The independent judge: rates far below plain sampling's reach, the second in-family search, re-judging."""

import json
import math

import pytest
import torch
from torch import nn

import tailguard as tg
from tailguard.bench.hardening import HardenTask, judge, keep_weights, rejudge
from tailguard.harden.judge import JudgeSettings, figure_of, judge_distribution, verdict
from tailguard.harden.patch_pgd import PatternSearch, pattern_attack
from tailguard.weights import save_weights

from ._toy_backdoor import TRIGGER_COL, TRIGGER_ROW, toy_task, trigger_model

SMALL = dict(budget=2_000, sampling_budget=2_000, attack_budget=6_000, attack_method="mc",
             pattern_steps=10, pattern_images=32, pattern_finalists=2, pattern_draws=4_000)


def far_tail():
    """x ~ N(0, I_2), catastrophe x_0 > 8: P = Phi(-8) = 10^-15.2, far below plain sampling's reach."""
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0]]))
        lin.bias.zero_()
    return lin, tg.Gaussian(torch.zeros(2)), tg.OutputAbove(0, 8.0)


def test_splitting_is_given_the_budget_a_far_tail_needs_and_says_when_it_had_not():
    model, dist, spec = far_tail()
    truth = math.log10(0.5 * math.erfc(8 / math.sqrt(2)))
    alone = judge_distribution(model, dist, spec, JudgeSettings(**{**SMALL, "escalation": 0}), seed=0)
    assert not math.isfinite(alone["splitting"]["log10_p"])  # 2,000 calls pay for too few levels
    assert not alone["verdict"]["resolved"] and figure_of(alone["verdict"]) > -9
    assert any(w.startswith("unresolved") for w in alone["verdict"]["warnings"])
    grown = judge_distribution(model, dist, spec, JudgeSettings(**SMALL), seed=0)
    assert grown["verdict"]["resolved"] and grown["splitting"]["n_model_calls"] > 8_000
    assert abs(figure_of(grown["verdict"]) - truth) < 2.0 and grown["verdict"]["ci_log10"][1] < -9
    assert not any(w.startswith("unresolved") for w in grown["verdict"]["warnings"])


def test_a_rate_plain_sampling_resolves_needs_no_more_splitting():
    model, dist, _ = far_tail()
    row = judge_distribution(model, dist, tg.OutputAbove(0, 1.0), JudgeSettings(**SMALL), seed=0)
    assert row["verdict"]["from"] == "mc" and row["verdict"]["resolved"]
    assert row["splitting"]["n_model_calls"] <= 2_000


def test_the_pattern_search_finds_the_planted_square_and_is_judged_by_plain_sampling():
    _, family = toy_task()
    search = JudgeSettings(**SMALL).pattern()
    finalists, calls = pattern_attack(trigger_model(), tg.ClassIs(1), family, search, seed=3)
    params, found = max(finalists, key=lambda f: figure_of({"log10_p": f[1].log10_p,
                                                            "ci_log10": f[1].ci_log10}))
    assert (int(params["row"]), int(params["col"])) == (TRIGGER_ROW, TRIGGER_COL)
    assert found.method == "mc" and found.log10_p > -0.1 and calls > len(finalists) * 4_000
    clean = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        clean[1].weight.zero_()
        clean[1].bias.copy_(torch.tensor([5.0, 0.0]))  # always class 0
    finalists, _ = pattern_attack(clean, tg.ClassIs(1), family, search, seed=3)
    assert all(f.diagnostics["hits"] == 0 for _, f in finalists)


def test_the_in_family_figure_is_the_worse_of_two_kinds_of_search():
    _, family = toy_task()
    judged = verdict(trigger_model(), tg.ClassIs(1), {}, family, JudgeSettings(**SMALL), seed=0)
    inside = [a for a in judged["attacks"] if a["in_threat_model"]]
    assert [a["search"] for a in inside] == ["tailguard.attack", "PGD on the pattern at every position"]
    assert judged["worst_in_threat_model_log10_p"] == max(figure_of(a) for a in inside) > -0.1


def toy_harden_task(model: nn.Module) -> HardenTask:
    (x, y), family = toy_task()
    dist = tg.NoisyEmpirical(family.base, 0.05)
    return HardenTask(name="toy", start_model=model, train=(x, y), test=(x, y), spec=tg.ClassIs(1),
                      family=family, train_deployment=dist, deployment=dist, triggers={"planted": dist},
                      train_set_size=len(y))


def test_a_kept_run_is_judged_again_from_its_weights_and_a_changed_file_is_refused(tmp_path):
    task = toy_harden_task(trigger_model())
    settings = JudgeSettings(**SMALL)
    record = {"task": "toy", "method": "harden", "seed": 1, "seconds": 12.0,
              "weights": keep_weights(task.start_model, tmp_path, "toy-harden-seed1")}
    untrained = toy_harden_task(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))
    again = rejudge(record, untrained, tmp_path, settings)
    direct = judge(trigger_model(), task, settings, seed=1)
    assert again["rejudged"] and again["seconds"] == 12.0 and again["judged"] == direct["judged"]
    assert again["test_accuracy"] == direct["test_accuracy"]
    path = tmp_path / record["weights"]["path"]
    save_weights(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), path)
    with pytest.raises(tg.WeightsError, match="not the model the record judged"):
        rejudge(record, task, tmp_path, settings)
    with pytest.raises(tg.WeightsError, match="kept no weights"):
        rejudge({**record, "weights": None}, task, tmp_path, settings)


def test_bad_judge_settings_are_named():
    with pytest.raises(tg.InvalidArgumentError, match="escalation"):
        JudgeSettings(escalation=-1)
    with pytest.raises(tg.InvalidArgumentError, match="resolve_log10"):
        JudgeSettings(resolve_log10=float("nan"))
    with pytest.raises(tg.InvalidArgumentError, match="pattern_finalists"):
        JudgeSettings(pattern_finalists=0)
    with pytest.raises(tg.InvalidArgumentError, match="pattern_step_size"):
        PatternSearch(step_size=0.0)
    assert json.loads(json.dumps(JudgeSettings().__dict__))["pattern_draws"] == 50_000  # plain JSON data
