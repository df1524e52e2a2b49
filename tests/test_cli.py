"""The command line: JSON output that round-trips, readable summaries, clean failures."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tailguard as tg
from tailguard.cli import app

CASE = """
[model]
factory = "tailguard.models:linear"
kwargs = { weight = [[0.6, 0.8]], bias = [0.0] }

[distribution]
kind = "gaussian"
mean = [0.0, 0.0]
std = 1.0

[spec]
kind = "output_above"
index = 0
threshold = 1.0

[estimate]
method = "mc"
budget = 5000
seed = 0
"""

runner = CliRunner()


@pytest.fixture()
def case_file(tmp_path: Path) -> Path:
    path = tmp_path / "case.toml"
    path.write_text(CASE)
    return path


def test_estimate_json_round_trips(case_file):
    result = runner.invoke(app, ["estimate", "--config", str(case_file), "--json", "--budget", "3000"])
    assert result.exit_code == 0, result.output
    est = tg.Estimate.from_json(result.stdout)
    assert est.method == "mc" and est.n_model_calls == 3000 and est.seed == 0
    assert -0.9 < est.log10_p < -0.7  # P[N(0,1) > 1] = 0.159, log10 = -0.80
    assert est.to_json() == result.stdout.strip()


def test_estimate_overrides_seed_and_method(case_file):
    args = ["estimate", "-c", str(case_file), "--json", "--seed", "5", "--method", "mc"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert tg.Estimate.from_json(result.stdout).seed == 5


def test_estimate_summary_is_readable(case_file):
    result = runner.invoke(app, ["estimate", "--config", str(case_file)])
    assert result.exit_code == 0, result.output
    for label in ("log10 p", "95% CI", "model calls", "5,000", "mc", "hits"):
        assert label in result.stdout


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (("budget = 5000", "budget = -1"), "estimate.budget"),
        (("threshold = 1.0", "threshold = 1.0\ncolour = 2"), "spec.colour"),
        (("[model]", "[model"), "malformed TOML"),
        (('method = "mc"', 'method = "mcc"'), "estimate.method"),
    ],
)
def test_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path, edit, named):
    path = tmp_path / "bad.toml"
    path.write_text(CASE.replace(*edit))
    result = runner.invoke(app, ["estimate", "--config", str(path)])
    assert result.exit_code == 2
    assert named in result.stderr and "error" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_missing_config_exits_2(tmp_path):
    result = runner.invoke(app, ["estimate", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_budget_too_small_for_method_is_a_clean_error(case_file):
    result = runner.invoke(app, ["estimate", "-c", str(case_file), "--method", "splitting", "--budget", "2"])
    assert result.exit_code == 2 and "budget" in result.stderr
    assert "Traceback" not in result.output


def test_methods_lists_registered_estimators():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for name in ["auto", *tg.available_methods()]:
        assert name in result.stdout
    assert "mc" in tg.available_methods()


def test_bench_writes_a_report(tmp_path):
    args = ["bench", "--quick", "--methods", "mc", "--budgets", "1000", "--seeds", "0"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    log = json.loads((tmp_path / "estimation.json").read_text())
    assert {r["method"] for r in log["records"]} == {"mc"}
    assert all(r["model_calls"] == 1000 for r in log["records"])
    assert (tmp_path / "estimation.md").is_file() and "mc" in result.stdout


@pytest.mark.parametrize("bad", [["--methods", "nope"], ["--seeds", "0,x"], ["--backend", "mars"]])
def test_bench_bad_options_exit_2(tmp_path, bad):
    result = runner.invoke(app, ["bench", "--quick", "--out", str(tmp_path), *bad])
    assert result.exit_code == 2 and "error" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_demo_runs_and_recovers_the_exact_answer():
    result = runner.invoke(app, ["demo", "--part", "estimate"])
    assert result.exit_code == 0, result.output
    assert "exact log10 p -9.01 is inside" in result.stdout


def test_attack_finds_the_planted_shift_of_the_policy_task(tmp_path):
    result = runner.invoke(app, ["attack", "--task", "policy", "--budget", "30000", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "attack.json").read_text())
    delta = summary["member"]["delta"]
    assert min(delta[6], delta[7]) > 1.0  # the trigger sensors
    assert summary["log10_p"] > -1.0


def test_harden_writes_report_weights_and_resumes(tmp_path):
    args = ["harden", "--task", "policy", "--steps", "4", "--checkpoint-every", "2", "--out", str(tmp_path)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    for name in (
        "report.json",
        "report.md",
        "report.png",
        "model.safetensors",
        "checkpoint/checkpoint.safetensors",
    ):
        assert (tmp_path / name).is_file()
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    other = runner.invoke(app, [*args[:4], "8", *args[5:], "--resume"])
    assert other.exit_code == 2 and "different configuration" in other.output


def test_unknown_task_exits_2():
    result = runner.invoke(app, ["harden", "--task", "nope"])
    assert result.exit_code == 2 and "--task must be one of" in result.output
