"""The ``tailguard`` command: a thin layer over the Python API, one function per command.

A case file (see tailguard.io) plus a few overrides, never a wall of options.
Mistakes in the input (any TailguardError) print one red line and exit with
status 2, without a traceback; bugs still show theirs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from .errors import TailguardError
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


@app.command("demo")
def demo_command() -> None:
    """Walk through estimation: exact answer, plain sampling, rare-event estimate, a digits model."""
    from . import demo

    with _bad_input_exits():
        demo.run()
