"""The ``tailguard`` command: a thin layer over the Python API, one function per command.

A case file (see tailguard.io) plus a few overrides, never a wall of options.
Mistakes in the input (any TailguardError) print one red line and exit with
status 2, without a traceback; bugs still show theirs.
"""

from __future__ import annotations

import json
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


class Suite(StrEnum):
    estimate = "estimate"
    harden = "harden"
    lm = "lm"


@app.command("bench")
def bench_command(
    suite: Annotated[
        Suite, typer.Argument(help="'estimate' (estimators on exact cases), 'harden', or 'lm' "
                                   "(token estimators against enumeration; with --real, SmolLM2).")
    ] = Suite.estimate,
    quick: Annotated[bool, typer.Option(help="The quick preset (about a minute) instead of full.")] = False,
    backend: Annotated[str, typer.Option(help="'local' or 'ray'.")] = "local",
    out: Annotated[Path, typer.Option(help="Folder for estimation.{json,md,png}.")] = Path("benchmarks"),
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods (default all).")] = None,
    budgets: Annotated[str | None, typer.Option(help="Comma-separated model-call budgets.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds.")] = None,
    real: Annotated[bool, typer.Option(help="lm: attack and harden SmolLM2 (about 15 min) instead of "
                                            "the enumerable models.")] = False,
) -> None:
    """Benchmark: estimators (and OpenTURNS) on cases with known answers, or harden and its baselines."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    if suite is Suite.harden:
        _bench_harden(quick, out)
        return
    if suite is Suite.lm:
        _bench_lm(quick, out, real)
        return

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


def _bench_harden(quick: bool, out: Path) -> None:
    """The hardening benchmark: every method on every task (quick: one task, few steps)."""
    from .bench.harden_report import write_harden_report
    from .bench.hardening import METHODS, TASKS, run_harden_benchmark

    console = Console()
    tasks, steps, budget = (["policy"], 60, 20_000) if quick else (list(TASKS), 600, 100_000)
    with _bad_input_exits():
        records = run_harden_benchmark(
            tasks,
            list(METHODS),
            steps=steps,
            eval_budget=budget,
            progress=lambda message: console.print(f"[dim]{escape(message)}[/dim]"),
        )
        paths = write_harden_report(records, out / "harden", {"steps": steps, "eval_budget": budget})
    console.print(f"report: {', '.join(str(p) for p in paths.values())}")


def _bench_lm(quick: bool, out: Path, real: bool) -> None:
    """Token estimators against exhaustive enumeration, or (real) SmolLM2 attacked and hardened."""
    console = Console()

    def say(message: str) -> None:
        console.print(f"[dim]{escape(message)}[/dim]")

    # a smoke run neither overwrites the full results nor meets the full run's checkpoints
    folder = out / "lm" / "quick" if quick else out / "lm"
    with _bad_input_exits():
        if real:
            from .bench.lm_real import RealRunSizes, run

            run(folder, RealRunSizes.quick() if quick else RealRunSizes(), say=say)
            console.print((folder / "real.md").read_text())
            return
        from .bench.lm_enum import run_benchmark

        paths = run_benchmark(folder, quick, progress=say)
    console.print(paths["markdown"].read_text())
    console.print(f"report: {', '.join(str(p) for p in paths.values())}")


def _task(name: str) -> Any:
    from .bench.hardening import TASKS

    if name not in TASKS:
        raise InvalidArgumentError(f"--task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]()


TaskOption = Annotated[str, typer.Option(help="Built-in task: digits-mlp, digits-cnn or policy.")]


@app.command("attack")
def attack_command(
    task: TaskOption = "digits-mlp",
    budget: Annotated[int, typer.Option(help="Model calls for search and final estimate.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Seed of the search.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write attack.json here.")] = None,
) -> None:
    """Search the task's family for the input distribution on which its model is most often catastrophic."""
    from .attack import attack

    console = Console()
    with _bad_input_exits():
        chosen = _task(task)
        console.print(f"family: {escape(chosen.family.constraint())}")
        result = attack(
            chosen.start_model, chosen.spec, chosen.family, budget=budget, seed=seed, progress=True
        )
    console.print(summary(result.estimate, f"worst member of the family ({task})"))
    console.print(f"member: {escape(json.dumps(result.family.describe(result.params))[:400])}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "attack.json").write_text(
            json.dumps({**result.summary(), "task": task, "seed": seed}, indent=1)
        )
        console.print(f"wrote {out / 'attack.json'}")


@app.command("harden")
def harden_command(
    task: TaskOption = "digits-mlp",
    steps: Annotated[int, typer.Option(help="Training steps (adversary step + model step each).")] = 600,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for report.{json,md,png} and model.safetensors.")] = Path(
        "tailguard-harden"
    ),
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in OUT/checkpoint.")] = False,
) -> None:
    """Train the task's model against its adversary; checkpoints, resumes, writes a report and weights."""
    from .harden import harden
    from .io import save_weights

    console = Console()
    with _bad_input_exits():
        chosen = _task(task)
        result = harden(
            chosen.start_model,
            train=chosen.train,
            spec=chosen.spec,
            family=chosen.family,
            deployment=chosen.train_deployment,
            test=chosen.test,
            seed=seed,
            steps=steps,
            checkpoint_dir=out / "checkpoint",
            checkpoint_every=checkpoint_every,
            resume=resume,
            progress=True,
            eval_every=max(steps // 4, 1),
        )
        paths = result.report.save(out)
        save_weights(result.model, out / "model.safetensors", {"task": task, "steps": steps, "seed": seed})
    console.print(result.report.markdown())
    console.print(
        f"report: {', '.join(str(p) for p in paths.values())}; weights: {out / 'model.safetensors'}"
    )
