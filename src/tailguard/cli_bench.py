"""``tailguard bench``: the runners behind each suite (the command itself is in ``cli``).

Each writes its report under the folder it is given, a quick (smoke) run under
FOLDER/quick so that it never overwrites the full results, and prints the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_support import bad_input_exits
from .errors import InvalidArgumentError
from .report.rows import format_value


def estimation(quick: bool, backend: str, out: Path, methods: str | None, budgets: str | None,
               seeds: str | None) -> None:
    """The estimators on cases with exact answers (quick: the smoke preset, under OUT/quick)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with bad_input_exits():
        from .bench import run_estimation_benchmark, summarise, write_report

        preset = "quick" if quick else "full"
        options = {
            "methods": _csv(methods, str, "--methods"),
            "budgets": _csv(budgets, int, "--budgets"),
            "seeds": _csv(seeds, int, "--seeds"),
        }
        with Progress(
            "[bold]bench", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
        ) as bar:
            task = bar.add_task("bench", total=None)

            def progress(record: dict[str, Any], done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            records = run_estimation_benchmark(**options, backend=backend, progress=progress, preset=preset)
        config = {"preset": preset, "backend": backend, **options}
        paths = write_report(records, _scratch(out, quick), config=config)
    Console().print(_summary_table(summarise(records)))
    Console().print(f"report: {', '.join(str(p) for p in paths.values())}")


def _csv(text: str | None, convert: Callable[[str], Any], option: str) -> list[Any] | None:
    """Parse a comma-separated option; None when the option was not given."""
    if text is None:
        return None
    try:
        return [convert(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise InvalidArgumentError(f"{option} must be a comma-separated list, got {text!r}") from exc


def _summary_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="|log10 error| for 1e-13 <= p <= 1e-6; CI coverage over all runs")
    columns = {
        "method": "method",
        "budget": "budget",
        "completed": "runs",
        "median_abs_log10_error": "median |err|",
        "max_abs_log10_error": "max |err|",
        "coverage": "coverage",
        "median_model_calls": "calls",
        "median_seconds": "seconds",
    }
    for name, header in columns.items():
        table.add_column(header, justify="left" if name == "method" else "right")
    for row in rows:
        table.add_row(*(escape(format_value(row[name])) for name in columns))
    return table


def _scratch(folder: Path, quick: bool) -> Path:
    """Where a benchmark writes: a quick (smoke) run goes to FOLDER/quick, leaving the full results."""
    if not quick:
        return folder
    Console().print(f"quick run: writing under {escape(str(folder / 'quick'))}")
    return folder / "quick"


def harden(quick: bool, out: Path) -> None:
    """The hardening benchmark: every method on every task (quick: one task, few steps)."""
    from .bench.harden_report import write_harden_report
    from .bench.hardening import METHODS, TASKS, run_harden_benchmark
    from .harden.judge import JudgeSettings

    console = Console()
    tasks, steps, budget = (["policy"], 60, 20_000) if quick else (list(TASKS), 600, 100_000)
    judge = JudgeSettings(budget=budget, sampling_budget=10 * budget, attack_budget=budget)
    with bad_input_exits():
        records = run_harden_benchmark(
            tasks,
            list(METHODS),
            steps=steps,
            judge_settings=judge,
            progress=lambda message: console.print(f"[dim]{escape(message)}[/dim]"),
        )
        folder = _scratch(out / "harden", quick)
        paths = write_harden_report(records, folder, {"steps": steps, "judge": dataclasses.asdict(judge)})
    console.print(f"report: {', '.join(str(p) for p in paths.values())}")


def suite(name: str, quick: bool, out: Path) -> None:
    """The stress or reliability suite (quick: one seed at 1e4 calls, written under OUT/quick)."""
    from .bench.suites import markdown, run_suite, write_suite_report

    budgets, seeds = ((10_000,), (0,)) if quick else ((10_000, 100_000), tuple(range(5)))
    folder = out / "quick" if quick else out
    console = Console()
    with bad_input_exits():
        records = run_suite(name, budgets=budgets, seeds=seeds,
                            progress=lambda r, done, total: console.print(
                                f"[dim]{done}/{total} {escape(r['method'])} {escape(r['case'])}[/dim]"))
        config = {"budgets": list(budgets), "seeds": list(seeds)}
        paths = write_suite_report(name, records, folder, config)
    console.print(markdown(name, records, config))
    console.print(f"report: {', '.join(str(p) for p in paths.values())}")


def lm(quick: bool, out: Path, real: bool) -> None:
    """Token estimators against exhaustive enumeration, or (real) SmolLM2 attacked and hardened."""
    console = Console()

    def say(message: str) -> None:
        console.print(f"[dim]{escape(message)}[/dim]")

    # a smoke run neither overwrites the full results nor meets the full run's checkpoints
    folder = out / "lm" / "quick" if quick else out / "lm"
    with bad_input_exits():
        if real:
            from .bench.lm_real import RealRunSizes, run

            run(folder, RealRunSizes.quick() if quick else RealRunSizes(), say=say)
            console.print((folder / "real.md").read_text())
            return
        from .bench.lm_enum import run_benchmark

        paths = run_benchmark(folder, quick, progress=say)
    console.print(paths["markdown"].read_text())
    console.print(f"report: {', '.join(str(p) for p in paths.values())}")


def scan(quick: bool, out: Path) -> None:
    """tg.scan beside Neural Cleanse and ABS on the trojan zoo (quick: 5 models), into OUT/scan."""
    from .bench.scan import run
    from .bench.trojan_zoo import default_cache_dir

    console = Console()
    folder = out / "scan" / "quick" if quick else out / "scan"
    zoo = default_cache_dir() / "quick" if quick else default_cache_dir()
    with bad_input_exits():
        paths = run(folder, zoo, quick=quick, progress=lambda m: console.print(f"[dim]{escape(m)}[/dim]"))
    console.print(paths["markdown"].read_text())
    console.print(f"report: {', '.join(str(p) for p in paths.values())}")
