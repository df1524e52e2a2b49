"""The README cannot rot: every ```python block runs, and every command it shows is exercised.

Python blocks run in README order, one namespace per ``##`` section (the blocks of a
section, ``###`` subsections included, share their state), in a scratch working
directory. To keep CI short the test rewrites the blocks' literal keyword values
before running them, and nothing else: ``budget=N`` becomes ``budget=max(N // 20, 64)``
and ``steps=N`` becomes ``steps=max(N // 100, 1)`` (see ``shrink``); the library has
no switch for this. A block preceded by ``<!-- readme-test: skip (reason) -->`` is
not run; ``test_skipped_blocks`` lists every such block with its reason.

Shell commands (``.venv/bin/tailguard ...`` and inline ```tailguard ...```) must each
appear in ``EXERCISED``, which names the CLI test that runs it (here or elsewhere) and
how it differs from the README's command (smaller budgets, --quick, fewer steps);
``test_every_command_is_exercised`` checks that table against the README, so a new
command in the README without a test fails here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tailguard.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->")
BUDGET_DIVISOR, MIN_BUDGET = 20, 64
STEPS_DIVISOR = 100


@dataclass(frozen=True)
class Block:
    section: str
    line: int  # of the block's first line of code in README.md
    source: str
    skip: str | None


def python_blocks(text: str) -> list[Block]:
    """Every ```python block with its ``##`` section and the skip marker right before it (if any)."""
    blocks, section, skip = [], "(before the first section)", None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        marker = SKIP.search(line)
        if lines[i].startswith("## "):
            section, skip = lines[i][3:].strip(), None
        elif marker:
            skip = marker.group("reason")
        elif line == "```python":
            end = lines.index("```", i + 1)
            blocks.append(Block(section, i + 2, "\n".join(lines[i + 1:end]), skip))
            i, skip = end, None
        elif line:
            skip = None  # a marker applies only to the block right after it
        i += 1
    return blocks


def shrink(source: str) -> str:
    """Literal ``budget=N`` and ``steps=N`` keyword values made small (the only rewrite)."""

    def smaller(match: re.Match[str]) -> str:
        key, value = match.group(1), int(match.group(2).replace("_", ""))
        if key == "budget":
            return f"{key}={min(max(value // BUDGET_DIVISOR, MIN_BUDGET), value)}"
        return f"{key}={max(value // STEPS_DIVISOR, 1)}"

    return re.sub(r"\b(budget|steps)=([0-9][0-9_]*)\b", smaller, source)


BLOCKS = python_blocks(README.read_text())
SECTIONS = list(dict.fromkeys(b.section for b in BLOCKS if b.skip is None))


def test_blocks_sections_skip_markers_and_shrinking():
    assert len(BLOCKS) >= 5
    assert shrink("f(x, budget=300_000, steps=600, eval_budget=7, n=96)") == \
        "f(x, budget=15000, steps=6, eval_budget=7, n=96)"
    assert shrink("budget=100") == "budget=64" and shrink("steps=12") == "steps=1"
    marked = ("## A\n\n<!-- readme-test: skip (needs a GPU) -->\n\n```python\nx = 1\n```\n\n"
              "text\n\n```python\ny\n```\n")
    assert [(b.section, b.line, b.source, b.skip) for b in python_blocks(marked)] == [
        ("A", 6, "x = 1", "needs a GPU"), ("A", 12, "y", None)]


@pytest.mark.parametrize("section", SECTIONS)
def test_section_runs(section, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"readme_{section}"}
    for block in (b for b in BLOCKS if b.section == section and b.skip is None):
        exec(compile(shrink(block.source), f"README.md:{block.line}", "exec"), namespace)  # noqa: S102


def test_skipped_blocks():
    skipped = [f"README.md:{b.line} ({b.section}): {b.skip}" for b in BLOCKS if b.skip is not None]
    if skipped:
        pytest.skip("README blocks not run: " + "; ".join(skipped))


# --- shell commands ----------------------------------------------------------------------------
def shell_commands(text: str) -> set[str]:
    """The arguments of every ``.venv/bin/tailguard`` command (comments cut) and inline `tailguard ...`."""
    found = re.findall(r"\.venv/bin/tailguard +([^#\n`&|;]*)", text)
    found += re.findall(r"`tailguard ([^`]+)`", text)
    return {" ".join(command.split()) for command in found}


#: README command -> (the test that runs it, how that run differs from the README's)
EXERCISED = {
    "estimate --config examples/case.toml": ("test_estimate_commands", "--budget 5000"),
    "estimate --config examples/case.toml --json": ("test_estimate_commands", "--budget 5000"),
    "attack --task digits-mlp": ("test_attack_command", "--budget 10000"),
    "harden --task digits-mlp --out runs/digits": ("test_harden_command_and_resume",
                                                   "--steps 1, then --resume"),
    "demo": ("test_demo_command", "--steps 2 (600 takes minutes); the estimate part as is"),
    "methods": ("tests/test_cli.py::test_methods_lists_registered_estimators", "as is"),
    "bench --quick": ("tests/test_cli.py::test_bench_quick_writes_a_report_in_a_scratch_folder",
                      "--methods mc --budgets 1000 --seeds 0"),
    "bench stress": ("test_bench_suite_commands", "--quick, on two of the suite's cases"),
    "bench reliability": ("test_bench_suite_commands", "--quick, on one of the suite's problems"),
    "bench harden": ("test_bench_harden_command", "--quick, methods harden and standard"),
    "bench lm": ("tests/test_lm_enum.py::test_quick_benchmark_from_the_command_line", "--quick"),
    "bench lm --real": ("test_bench_lm_real_command", "--quick, a tiny random Llama for SmolLM2"),
    "scan --config examples/scan.toml": ("tests/test_cli.py::test_scan_command_writes_a_report",
                                         "budget 120000, 100 images and a smaller search in scan.settings"),
    "bench scan": ("tests/test_cli.py::test_bench_scan_quick_writes_under_scan_quick",
                   "--quick, two untrained models for the zoo and tg.scan alone with a tiny search"),
}


def test_every_command_is_exercised():
    assert shell_commands(README.read_text()) == set(EXERCISED)
    for test, _ in EXERCISED.values():
        path, _, name = test.rpartition("::")
        source = (ROOT / path).read_text() if path else Path(__file__).read_text()
        assert f"def {name}(" in source, f"{test} does not exist"


runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_estimate_commands(extra):
    out = invoke("estimate", "--config", str(ROOT / "examples" / "case.toml"), *extra, "--budget", "5000")
    assert ('"log10_p"' if extra else "log10 p") in out


def test_attack_command():
    assert "worst member of the family" in invoke("attack", "--task", "digits-mlp", "--budget", "10000")


def test_harden_command_and_resume(tmp_path):
    args = ["harden", "--task", "digits-mlp", "--out", str(tmp_path / "runs" / "digits"), "--steps", "1"]
    invoke(*args)
    invoke(*args, "--resume")
    assert (tmp_path / "runs" / "digits" / "report.html").is_file()


def test_demo_command(tmp_path):
    invoke("demo", "--steps", "2", "--out", str(tmp_path))
    assert (tmp_path / "demo.md").is_file()


@pytest.mark.parametrize(("suite", "keep"), [("stress", 2), ("reliability", 1)])
def test_bench_suite_commands(suite, keep, tmp_path, monkeypatch):
    from tailguard.bench import suites

    cases = suites.suite_cases(suite)[:keep]
    monkeypatch.setattr(suites, "suite_cases", lambda name: cases)
    invoke("bench", suite, "--quick", "--out", str(tmp_path))
    assert (tmp_path / "quick" / f"{suite}.html").is_file()


def test_bench_harden_command(tmp_path, monkeypatch):
    from tailguard.bench import hardening

    monkeypatch.setattr(hardening, "METHODS", ("harden", "standard"))
    invoke("bench", "harden", "--quick", "--out", str(tmp_path))
    assert (tmp_path / "harden" / "quick" / "harden.html").is_file()


def test_bench_lm_real_command(tmp_path, monkeypatch):
    from tailguard.bench import lm_real

    from .test_lm_dist import tiny_llama
    from .test_lm_real import VOCAB, CharChatTokenizer

    tiny = lambda cache_dir=None: (tiny_llama(VOCAB), CharChatTokenizer())  # noqa: E731
    monkeypatch.setattr(lm_real, "load_smollm2", tiny)
    monkeypatch.setattr(lm_real, "forbidden_ids", lambda tokenizer: [3, 7])
    invoke("bench", "lm", "--real", "--quick", "--out", str(tmp_path))
    assert (tmp_path / "lm" / "quick" / "real.md").is_file()
