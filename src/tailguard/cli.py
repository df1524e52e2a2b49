"""The ``tailguard`` command: a thin layer over the Python API, one function per command.

A case file (see tailguard.io) plus a few overrides, never a wall of options.
Mistakes in the input (any TailguardError) print one red line and exit with
status 2, without a traceback; bugs still show theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from .errors import InvalidArgumentError, TailguardError
from .estimators.base import DifferentiableEstimator, available, build
from .result import Estimate

app = typer.Typer(
    help="Estimate, attack and harden the rarest catastrophic failures of neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2


def _fail(exc: Exception) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] [red]{escape(str(exc))}[/red]")
    raise typer.Exit(EXIT_BAD_INPUT)


@contextmanager
def _bad_input_exits() -> Iterator[None]:
    """Turn tailguard's input errors into a one-line message and exit status 2."""
    try:
        yield
    except TailguardError as exc:
        _fail(exc)


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(est: Estimate, title: str) -> Panel:
    """A readable panel: estimate, CI, cost, diagnostics and warnings."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    low, high = est.ci_log10
    tag = " [yellow](heuristic: the CI reflects no sampling error)[/yellow]" if est.heuristic else ""
    chosen = est.settings.get("chosen_by")
    table.add_row("log10 p", f"{est.log10_p:.3f}")
    table.add_row(f"{100 * est.confidence:g}% CI (log10)", f"[{low:.3f}, {high:.3f}]")
    table.add_row("p", f"{est.p:.3e}" if est.log10_p > -300 else f"1e{est.log10_p:.1f}")
    table.add_row("method", f"{est.method}" + (f" (chosen by {chosen})" if chosen else "") + tag)
    table.add_row("model calls", f"{est.n_model_calls:,}")
    table.add_row("seconds", f"{est.seconds:.2f}")
    table.add_row("seed", str(est.seed))
    for key, value in est.diagnostics.items():
        table.add_row(f"[dim]{escape(key)}[/dim]", escape(_format_value(value)))
    for warning in est.warnings:
        table.add_row("[yellow]warning[/yellow]", f"[yellow]{escape(warning)}[/yellow]")
    return Panel(table, title=escape(title), expand=False)


@app.command("estimate")
def estimate_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Case file (TOML).")],
    method: Annotated[str | None, typer.Option(help="Override estimate.method of the case file.")] = None,
    budget: Annotated[int | None, typer.Option(help="Override estimate.budget (model calls).")] = None,
    seed: Annotated[int | None, typer.Option(help="Override estimate.seed.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the Estimate as JSON.")] = False,
) -> None:
    """Estimate P(catastrophe) for the model, distribution and spec of a case file."""
    from .io import load_case

    overrides = {k: v for k, v in {"method": method, "budget": budget, "seed": seed}.items() if v is not None}
    with _bad_input_exits():
        case = load_case(config)
        est = case.estimate(progress=not as_json, **overrides)
    if as_json:
        typer.echo(est.to_json())
    else:
        Console().print(summary(est, str(config)))


@app.command("methods")
def methods_command() -> None:
    """List the registered estimators."""
    table = Table("method", "differentiable", "description")
    table.add_row("auto", "", "choose by what the model, D and spec support; reports which")
    for name in available():
        estimator = build(name, {})
        doc = (type(estimator).__doc__ or "").strip().splitlines()[0]
        diff = "yes" if isinstance(estimator, DifferentiableEstimator) else "no"
        table.add_row(name, diff, escape(doc))
    Console().print(table)


class DemoPart(StrEnum):
    estimate = "estimate"
    harden = "harden"
    all = "all"


@app.command("demo")
def demo_command(
    part: Annotated[DemoPart, typer.Option(help="Which walkthrough to run.")] = DemoPart.all,
    out: Annotated[Path, typer.Option(help="Folder for the harden report.")] = Path("tailguard-demo"),
    steps: Annotated[int, typer.Option(help="Hardening steps.")] = 600,
) -> None:
    """Walk through estimate (exact answer, sampling, rare-event CI), then attack and harden."""
    from . import demo

    console = Console()
    with _bad_input_exits():
        if part in (DemoPart.estimate, DemoPart.all):
            demo.run(console)
        if part in (DemoPart.harden, DemoPart.all):
            from . import demo_harden

            demo_harden.run(out_dir=out, steps=steps, console=console)


def _csv(text: str | None, convert: Callable[[str], Any], option: str) -> list[Any] | None:
    """Parse a comma-separated option; None when the option was not given."""
    if text is None:
        return None
    try:
        return [convert(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise InvalidArgumentError(f"{option} must be a comma-separated list, got {text!r}") from exc


def _bench_summary(rows: list[dict[str, Any]]) -> Table:
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
        table.add_row(*(escape(_format_value(row[name])) for name in columns))
    return table


@app.command("bench")
def bench_command(
    quick: Annotated[bool, typer.Option(help="The quick preset (about a minute) instead of full.")] = False,
    backend: Annotated[str, typer.Option(help="'local' or 'ray'.")] = "local",
    out: Annotated[Path, typer.Option(help="Folder for estimation.{json,md,png}.")] = Path("benchmarks"),
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods (default all).")] = None,
    budgets: Annotated[str | None, typer.Option(help="Comma-separated model-call budgets.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds.")] = None,
) -> None:
    """Run every estimator (and OpenTURNS) on cases with known answers; write a report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with _bad_input_exits():
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
        paths = write_report(records, out, config=config)
    Console().print(_bench_summary(summarise(records)))
    Console().print(f"report: {', '.join(str(p) for p in paths.values())}")
