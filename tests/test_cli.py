"""The command line: JSON output that round-trips, readable summaries, clean failures."""

import io
import json
import math
from html import escape
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import tailguard as tg
from tailguard.cli import app, summary

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


def test_estimate_report_writes_html_json_and_jsonl(case_file, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["estimate", "-c", str(case_file), "--budget", "3000", "--report", str(out)])
    assert result.exit_code == 0, result.output
    est = tg.Estimate.from_json((out / "estimate.jsonl").read_text())
    assert est.n_model_calls == 3000
    html = (out / "estimate.html").read_text()
    assert escape(est.headline()) in html and escape('factory = "tailguard.models:linear"') in html
    as_json = runner.invoke(app, ["estimate", "-c", str(case_file), "--json", "--report", str(out)])
    logged = tg.Estimate.from_json((out / "estimate.jsonl").read_text())
    assert tg.Estimate.from_json(as_json.stdout) == logged


def test_estimate_report_into_a_file_is_refused_before_the_model_is_built(case_file, monkeypatch):
    from tailguard import io as tg_io

    monkeypatch.setattr(tg_io, "build_model", lambda *a: pytest.fail("the model was built"))
    result = runner.invoke(app, ["estimate", "-c", str(case_file), "--report", str(case_file)])
    assert result.exit_code == 2 and "is not a folder" in result.stderr


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


def test_bench_quick_writes_a_report_in_a_scratch_folder(tmp_path):
    committed = tmp_path / "estimation.json"
    committed.write_text("the full results")
    args = ["bench", "--quick", "--methods", "mc", "--budgets", "1000", "--seeds", "0"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    log = json.loads((tmp_path / "quick" / "estimation.json").read_text())
    assert {r["method"] for r in log["records"]} == {"mc"}
    assert all(r["model_calls"] == 1000 for r in log["records"])
    assert (tmp_path / "quick" / "estimation.md").is_file() and "mc" in result.stdout
    assert (tmp_path / "quick" / "estimation.html").is_file()
    assert committed.read_text() == "the full results" and not (tmp_path / "estimation.md").exists()
    assert f"writing under {tmp_path / 'quick'}" in result.stdout.replace("\n", "")


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
    steps = (tmp_path / "attack.jsonl").read_text().splitlines()
    assert len(steps) > 4 and "restart" in steps[0] and (tmp_path / "attack.html").is_file()


def test_harden_writes_report_weights_and_resumes(tmp_path):
    args = ["harden", "--task", "policy", "--steps", "4", "--checkpoint-every", "2", "--out", str(tmp_path)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    for name in (
        "report.json",
        "report.md",
        "report.png",
        "report.html",
        "steps.jsonl",
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


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"tailguard {tg.__version__}"


@pytest.mark.parametrize("command", [[], ["estimate"], ["attack"], ["harden"], ["bench"], ["demo"]])
def test_help_shows_flags_without_type_markers(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "--help" in result.stdout and "<bool>" not in result.stdout


def test_estimate_help_documents_strict_and_trust():
    text = runner.invoke(app, ["estimate", "--help"]).stdout
    assert "--strict" in text and "status 3" in text and "--trust-module" in text


def render(est: tg.Estimate, seed: int | None = None) -> str:
    out = io.StringIO()
    Console(file=out, width=100).print(summary(est, "t", seed=seed))
    return out.getvalue()


def row(text: str, label: str) -> str:
    """The value beside ``label`` in a rendered summary panel."""
    for line in text.splitlines():
        cells = line.strip("│ ").split("  ", 1)
        if cells[0] == label:
            return cells[1].strip()
    raise AssertionError(f"no row {label!r} in\n{text}")


def test_a_zero_hit_estimate_shows_its_bound_not_1e_inf(case_file):
    path = case_file.parent / "rare.toml"
    path.write_text(CASE.replace("threshold = 1.0", "threshold = 10.0"))
    result = runner.invoke(app, ["estimate", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "1e-inf" not in result.stdout and "0 seen; p <=" in result.stdout
    assert "upper bound" in result.stdout and "[-inf, -3." in result.stdout


def test_nested_diagnostics_are_formatted_not_dumped():
    est = tg.Estimate(
        log10_p=-3.0,
        ci_log10=(-3.5, -2.5),
        n_model_calls=100,
        method="is",
        seed=0,
        diagnostics={
            "levels": [-3.1 + 0.25 * i for i in range(12)] + [0.0],
            "replicates": [{"ess": 1.23456, "levels": [-2.0, -1.0, 0.0]}, {"ess": 40.0, "ok": True}],
            "mode_search": {"calls": 1700, "gradient_free": False},
            "few": [1, 2],
        },
    )
    text = render(est)
    for raw in ("{", "}", "'", "1.23456", "True", "False"):
        assert raw not in text
    assert "13 values from -3.1 to 0" in text
    assert "replicates 1" in text and "ess 1.235" in text and "replicates 2" in text
    assert "calls" in text and "1,700" in text and "gradient_free" in text and "1, 2" in text


def test_the_seed_shown_is_the_seed_used():
    est = tg.Estimate(log10_p=-1.0, ci_log10=(-1.1, -0.9), n_model_calls=10, method="mc", seed=None)
    assert row(render(est, seed=0), "seed") == "0"
    assert row(render(est), "seed") == "a caller's generator"
    assert row(render(tg.Estimate(-1.0, (-1.1, -0.9), 10, "mc", seed=7), seed=0), "seed") == "7"


UNTRUSTED = tg.Estimate(
    log10_p=-4.0,
    ci_log10=(-4.1, -3.9),
    n_model_calls=5000,
    method="is",
    seed=0,
    warnings=("importance weights are heavy-tailed (ESS = 1): the CI cannot be trusted",),
    trusted=False,
)


@pytest.mark.parametrize("as_json", [False, True])
def test_strict_exits_3_on_an_untrusted_interval_and_shows_why(case_file, monkeypatch, as_json):
    from tailguard.io import Case

    monkeypatch.setattr(Case, "estimate", lambda self, **kwargs: UNTRUSTED)
    args = ["estimate", "-c", str(case_file), *(["--json"] if as_json else [])]
    relaxed = runner.invoke(app, args)
    assert relaxed.exit_code == 0
    strict = runner.invoke(app, [*args, "--strict"])
    assert strict.exit_code == 3 and "not trusted" in strict.stderr
    if as_json:
        assert tg.Estimate.from_json(strict.stdout) == UNTRUSTED
    else:
        assert "interval NOT trusted" in relaxed.stdout and "heavy-tailed" in relaxed.stdout


def test_strict_exits_3_on_a_heuristic_and_0_on_a_trusted_interval(case_file):
    mlp_case = case_file.parent / "mlp.toml"
    mlp_case.write_text(
        CASE.replace('"tailguard.models:linear"', '"tailguard.models:mlp"').replace(
            "weight = [[0.6, 0.8]], bias = [0.0]", "in_dim = 2, hidden = 8, out_dim = 1, depth = 1"
        )
    )
    heuristic = runner.invoke(app, ["estimate", "-c", str(mlp_case), "--method", "moments", "--strict"])
    assert heuristic.exit_code == 3, heuristic.output
    assert "heuristic" in heuristic.stdout and "heuristic" in heuristic.stderr
    trusted = runner.invoke(app, ["estimate", "-c", str(case_file), "--strict"])
    assert trusted.exit_code == 0 and "trusted" in trusted.stdout


def test_json_encodes_minus_inf_as_a_string_and_round_trips(case_file):
    path = case_file.parent / "rare.toml"
    path.write_text(CASE.replace("threshold = 1.0", "threshold = 10.0"))
    result = runner.invoke(app, ["estimate", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    raw = json.loads(result.stdout, parse_constant=refuse)
    assert raw["log10_p"] == "-inf" and raw["ci_log10"][0] == "-inf"
    est = tg.Estimate.from_json(result.stdout)
    assert est.log10_p == -math.inf and math.isfinite(est.ci_log10[1])
    assert tg.Estimate.from_json(est.to_json()) == est and est.to_json() == result.stdout.strip()


@pytest.fixture()
def untrained_tasks(monkeypatch):
    """Built-in tasks that record being built: building one trains its model."""
    from tailguard.bench import hardening

    built = []
    for name in list(hardening.TASKS):
        monkeypatch.setitem(hardening.TASKS, name, lambda name=name: built.append(name))
    return built


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["harden", "--task", "policy", "--steps", "0"], "steps must be a positive int"),
        (["harden", "--task", "policy", "--checkpoint-every", "0"], "checkpoint_every must be"),
        (["harden", "--task", "policy", "--resume"], "no checkpoint at"),
        (["attack", "--task", "policy", "--budget", "0"], "budget must be a positive int"),
        (["attack", "--task", "policy", "--budget", "900"], "budget 900 is too small"),
        (["attack", "--task", "nope"], "--task must be one of"),
    ],
)
def test_attack_and_harden_refuse_bad_options_before_training(tmp_path, untrained_tasks, args, named):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and named in result.stderr, result.output
    assert untrained_tasks == []


def test_out_that_is_a_file_is_refused_before_training(tmp_path, untrained_tasks):
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, ["harden", "--task", "policy", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is not a folder" in result.stderr
    assert untrained_tasks == []


def test_estimate_overrides_are_checked_before_the_model_is_built(case_file, monkeypatch):
    from tailguard import io as tg_io

    monkeypatch.setattr(tg_io, "build_model", lambda *a: pytest.fail("the model was built"))
    for args, named in [(["--budget", "0"], "--budget must be"), (["--method", "nope"], "unknown method")]:
        result = runner.invoke(app, ["estimate", "-c", str(case_file), *args])
        assert result.exit_code == 2 and named in result.stderr


def test_bench_harden_quick_writes_under_harden_quick(tmp_path, monkeypatch):
    from tailguard.bench import harden_report, hardening

    written = []
    monkeypatch.setattr(hardening, "run_harden_benchmark", lambda *args, **kwargs: [])
    monkeypatch.setattr(
        harden_report, "write_harden_report", lambda records, folder, config: written.append(folder) or {}
    )
    result = runner.invoke(app, ["bench", "harden", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert written == [tmp_path / "harden" / "quick"]


def test_scan_command_writes_a_report(tmp_path):
    """``tailguard scan --config examples/scan.toml`` with a smaller search in [scan.settings]."""
    examples = Path(__file__).parents[1] / "examples"
    text = (examples / "scan.toml").read_text()
    text = text.replace('weights = "digits_mlp.safetensors"',
                        f'weights = "{(examples / "digits_mlp.safetensors").as_posix()}"')
    text = text.replace("budget = 360000", "budget = 120000").replace("count = 200", "count = 100")
    text += 'settings = { candidates = 36, restarts = 2, steps = 10, final_fraction = 0.5 }\n'
    config = tmp_path / "scan.toml"
    config.write_text(text)
    result = runner.invoke(app, ["scan", "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "score" in result.stdout and "class 0" in result.stdout
    saved = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert saved["settings"]["budget"] == 120000 and len(saved["per_class"]) == 10
    assert "| class | worst family |" in (tmp_path / "out" / "scan.md").read_text()


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda t: t.replace("[images]", "[imagez]"), "imagez"),
        (lambda t: t.replace("count = 200", "count = 100000"), "images.count"),
        (lambda t: t + "settings = { restart = 2 }\n", "scan.settings"),
        (lambda t: t.replace("tailguard.models:mlp", "os:system"), "model.factory"),
    ],
)
def test_scan_command_refuses_a_bad_scan_file_with_one_line(tmp_path, edit, named):
    examples = Path(__file__).parents[1] / "examples"
    config = tmp_path / "scan.toml"
    config.write_text(edit((examples / "scan.toml").read_text()))
    result = runner.invoke(app, ["scan", "--config", str(config)])
    assert result.exit_code == 2
    assert named in result.output and "Traceback" not in result.output


def test_bench_scan_quick_writes_under_scan_quick(tmp_path, monkeypatch):
    """``tailguard bench scan`` (--quick), on two untrained models for the zoo and one fast detector."""
    from torch import nn

    from tailguard.bench import scan as bench_scan

    from .test_bench_scan import _entry

    entries = [_entry("c0", False), _entry("t0", True)]
    monkeypatch.setattr(bench_scan, "build_zoo", lambda cache_dir, **kwargs: entries)
    monkeypatch.setattr(bench_scan, "load_zoo_model", lambda entry, cache_dir: nn.Sequential(
        nn.Flatten(), nn.Linear(64, 10)))
    fast = {"candidates": 16, "restarts": 1, "steps": 2, "final_fraction": 0.5}
    monkeypatch.setattr(bench_scan, "detectors", lambda budget: {
        "tailguard": bench_scan.tailguard_detector(60_000, **fast)})
    monkeypatch.setenv("TAILGUARD_ZOO_DIR", str(tmp_path / "zoo"))
    result = runner.invoke(app, ["bench", "scan", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "scan" / "quick" / "scan.json").read_text())["records"]
    assert {(r["model"], r["detector"]) for r in records} == {("c0", "tailguard"), ("t0", "tailguard")}
    assert (tmp_path / "scan" / "quick" / "scan.png").is_file()
