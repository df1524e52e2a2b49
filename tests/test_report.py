"""HTML reports: estimates drawn as what they are, pages rebuilt from their logs alone, wiring."""

import json
import math
from pathlib import Path

import pytest
from matplotlib.path import Path as MPath

import tailguard as tg
from tailguard.bench.harden_report import write_harden_report
from tailguard.bench.report import write_report
from tailguard.bench.suites import write_suite_report
from tailguard.report import render
from tailguard.report.page import Heading, Paragraph, Table, group_warnings, markdown_blocks
from tailguard.report.pages import write_estimate_report
from tailguard.report.plots import EstimatePlot, figure, png

ZERO_HITS = {"log10_p": -math.inf, "ci_log10": [-math.inf, -3.0], "method": "mc", "n_model_calls": 10,
             "trusted": True, "warnings": []}
WIDE = {"log10_p": -8.0, "ci_log10": [-20.0, -2.0], "method": "auto", "n_model_calls": 10, "trusted": False,
        "warnings": ["no method could vouch for its interval (ESS = 3)"]}


def drawn(ax):
    """Every (x, y) point the axes' lines show, and the legend's labels."""
    points = [(x, y) for line in ax.lines for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)]
    legend = ax.get_legend()
    return points, [t.get_text() for t in legend.get_texts()] if legend else []


def test_bounds_are_arrows_at_the_upper_end_and_never_points_at_minus_inf():
    fig, (ax,) = figure()
    plot = EstimatePlot(ax, "t", "x")
    plot.add([0, 1, 2], [-3.0, -math.inf, -8.0], [(-3.1, -2.9), (-math.inf, -5.0), (-20.0, -2.0)], "s")
    plot.finish()
    points, labels = drawn(ax)
    assert all(math.isfinite(y) for _, y in points)
    bound = [line for line in ax.lines if isinstance(line.get_marker(), MPath) and len(line.get_xdata())]
    assert [(float(x), float(y)) for line in bound for x, y in zip(line.get_xdata(), line.get_ydata(),
                                                                  strict=True)] == [(1.0, -5.0)]
    assert (1, -math.inf) not in points and not any(x == 1 and y != -5.0 for x, y in points)
    dashed = [c for c in ax.collections if c.get_linestyle()[0][1] is not None]
    assert dashed, "the interval 18 decades wide is drawn dashed"
    assert labels == ["s", "upper bound only: no catastrophe seen",
                      "CI wider than 10 decades or open (dashed)"]


def test_legend_lists_only_what_was_drawn_and_reference_lines_are_labelled():
    fig, (ax,) = figure()
    plot = EstimatePlot(ax, "t", "x")
    plot.add([0], [-2.0], [(-2.1, -1.9)], "points only")
    plot.add([1], [-math.inf], [(-math.inf, math.inf)], "nothing finite")  # drawn nowhere
    plot.line([0, 1], [-1.0, -math.inf], "surrogate")
    plot.reference(-9.0, "target 1e-9")
    plot.finish()
    _, labels = drawn(ax)
    assert labels == ["points only", "surrogate (1 non-finite values left out)", "target 1e-9"]
    assert any("no finite bound, not drawn" in t.get_text() for t in ax.texts)


def test_a_plot_without_a_title_is_refused():
    fig, (ax,) = figure()
    ax.plot([0, 1], [0, 1])
    with pytest.raises(ValueError, match="title"):
        png(fig)


def test_markdown_tables_headings_and_paragraphs():
    text = "# Title\n\nIntro line\ncontinued.\n\n## Part\n\n| a \\| b | c |\n|---|---:|\n| 1 | 2 |\n\n"
    blocks = markdown_blocks(text + "![x](x.png)\n")
    table = Table(("a | b", "c"), (("1", "2"),))
    assert blocks == [Paragraph("Intro line continued."), Heading("Part"), table]


def test_warnings_that_differ_only_in_numbers_are_one_line():
    found = [(f"step {i}", f"heavy tails (ESS = {i})") for i in range(5)] + [("step 9", "other")]
    lines = group_warnings(found, examples=2)
    assert lines == ["heavy tails (ESS = 0) (5 times, numbers vary: step 0; step 1; ...)", "other (step 9)"]
    assert group_warnings([("a", "x"), ("b", "x")]) == ["x (2 times: a; b)"]
    assert group_warnings([(str(i), f"w{'x' * i}") for i in range(5)], limit=2)[-1].startswith("3 more kinds")


def assert_self_contained(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert html.count("<img ") == html.count('src="data:image/png;base64,')


def harden_report() -> tg.HardenReport:
    report = tg.HardenReport(settings={"lam": 0.1}, constraint="any 2x2 patch", seed=0, seconds=1.0,
                             model_calls=99)
    for step in range(4):
        report.steps.append({"step": step, "task_loss": 0.5, "batch_accuracy": 1.0,
                             "adversary_log10_p": -1.0 - step, "deployment_log10_p": -math.inf})
        if step % 2:
            report.evals.append({"step": step + 1, "test_accuracy": 0.9, "held_out": [ZERO_HITS, WIDE],
                                 "deployment": ZERO_HITS})
    return report


def test_harden_report_page_is_rebuilt_from_json_and_jsonl_alone(tmp_path):
    report = harden_report()
    paths = report.save(tmp_path)
    rows = [json.loads(line) for line in paths["log"].read_text().splitlines()]
    assert [r["type"] for r in rows] == ["step", "step", "eval", "step", "step", "eval"]
    first = paths["html"].read_text()
    paths["html"].unlink()
    assert render(tmp_path) == [paths["html"]] and paths["html"].read_text() == first
    assert tg.HardenReport.from_dict(json.loads(paths["json"].read_text())) == report
    assert_self_contained(first)
    assert "Warnings (1)" in first
    assert "no method could vouch for its interval (ESS = 3) (2 times: step 2" in first
    assert "&lt;= -3.00 (none seen)" in first and "-inf [" not in first
    assert "tailguard" in first and '"lam"' not in first and "<th>lam</th>" in first


def test_estimate_report_shows_warnings_state_and_settings(tmp_path):
    est = tg.Estimate(-4.0, (-4.1, -3.9), 500, "is", seed=3, trusted=False,
                      warnings=("ESS = 1: heavy tails",),
                      diagnostics={"pilot": {"log10_p": -3.5, "ci_log10": [-5.0, -2.5]}, "ess": 1.0})
    paths = write_estimate_report(est, tmp_path, "Estimate: case.toml", {"budget": 500, "seed": 3}, "[x]\n")
    html = paths["html"].read_text()
    assert_self_contained(html)
    assert html.index("Warnings (2)") < html.index("<main>")
    assert "interval NOT trusted" in html and "ESS = 1: heavy tails" in html and "[x]" in html
    assert tg.Estimate.from_dict(json.loads(paths["log"].read_text())) == est
    assert render(paths["json"]) == [paths["html"]]


def record(method: str, case: str, truth: float, estimate: float, ci: list[float], **extra) -> dict:
    return {"method": method, "case": case, "family": "linear", "true_log10_p": truth,
            "truth_ci_log10": [truth, truth], "truth_source": "exact", "budget": 1000, "seed": 0,
            "status": "ok", "reason": None, "estimate_log10_p": estimate, "ci_log10": ci,
            "covered": ci[0] <= truth <= ci[1], "abs_log10_error": abs(estimate - truth),
            "model_calls": 1000, "seconds": 0.1, "heuristic": False, "trusted": True, "warnings": [],
            **extra}


RECORDS = [
    record("mc", "linear-3", -3.0, -3.02, [-3.1, -2.9]),
    record("mc", "linear-9", -9.0, -math.inf, [-math.inf, -2.5]),
    record("is", "linear-9", -9.0, -7.0, [-7.1, -6.9]),  # off by 2 decades, trusted, no warning
    record("is", "linear-3", -3.0, -3.0, [-3.01, -2.99], warnings=["low ESS"]),
]


def test_bench_pages_show_their_tables_plot_and_silent_misses(tmp_path):
    est_paths = write_report(RECORDS, tmp_path / "est", config={"preset": "test"})
    suite_paths = write_suite_report("stress", RECORDS, tmp_path / "suite", {"budgets": [1000]})
    for paths in (est_paths, suite_paths):
        html = paths["html"].read_text()
        assert_self_contained(html)
        assert html.count("<table>") >= 2 and html.count("<img ") == 1 and "low ESS" in html
        assert len(paths["log"].read_text().splitlines()) == len(RECORDS)
        assert paths["markdown"].is_file()
    assert "silent miss: is on linear-9" in suite_paths["html"].read_text()
    assert json.loads(est_paths["json"].read_text())["records"][0]["method"] == "mc"


def test_harden_bench_page(tmp_path):
    def judged(verdict):
        return {"training": WIDE, "splitting": WIDE, "sampling": ZERO_HITS, "verdict": verdict, "agree": True}

    attacks = [
        {"family": "training family", "in_threat_model": True, "log10_p": -4.0, "ci_log10": [-4.1, -3.9]},
        {"family": "4x4 patches", "in_threat_model": False, "log10_p": -0.5, "ci_log10": [-0.6, -0.4]},
    ]
    rows = [{"task": "policy", "method": m, "seed": seed, "seconds": 1.0, "train_set_size": 10, "family": "f",
             "test_accuracy": 0.9, "judged": {"deployment": judged(ZERO_HITS), "planted": judged(WIDE)},
             "attacks": attacks, "disagreements": []} for m in ("harden", "standard") for seed in (0, 1)]
    paths = write_harden_report(rows, tmp_path, {"steps": 1})
    html = paths["html"].read_text()
    assert "no method could vouch" in html  # the verdict's warnings reach the page
    assert "| harden | 2 |" in paths["markdown"].read_text()  # one row per method over its seeds
    assert render(tmp_path) == [paths["html"]]


def test_render_refuses_a_folder_without_reports(tmp_path):
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(tg.InvalidArgumentError, match="no tailguard report"):
        render(tmp_path)
    with pytest.raises(tg.InvalidArgumentError, match="neither"):
        render(tmp_path / "missing")


def test_committed_example_renders_from_its_files(tmp_path):
    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "estimate"
    for name in ("estimate.json", "estimate.jsonl"):
        (tmp_path / name).write_bytes((example / name).read_bytes())
    (html,) = render(tmp_path)
    assert "examples/case.toml" in html.read_text()
