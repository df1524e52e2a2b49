"""The ``tailguard`` command: a thin layer over the Python API, one function per command.

A case file (see tailguard.io) plus a few overrides, never a wall of options.
Mistakes in the input (any TailguardError) print one red line and exit with
status 2, without a traceback; bugs still show theirs. Arguments are checked
before anything is trained or estimated. ``estimate --strict`` exits with
status 3 when the interval may not be read at its nominal confidence.
"""

from __future__ import annotations

import json
import math
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

from . import __version__
from .errors import BudgetError, InvalidArgumentError, TailguardError
from .estimators.base import DifferentiableEstimator, available, build
from .result import Estimate

# plain (not rich) help: typer's rich help prints a stray "<bool>" beside every flag
app = typer.Typer(
    help="Estimate, attack and harden the rarest catastrophic failures of neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_BAD_INPUT = 2
EXIT_UNRELIABLE = 3
LONG_LIST = 4  # lists longer than this are summarised (count, range), not printed


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


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tailguard {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Estimate, attack and harden the rarest catastrophic failures of neural networks."""


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return str(value) if not math.isfinite(value) else f"{value:.4g}"


def _format_value(value: Any) -> str:
    """One readable line for a diagnostic: numbers rounded, long lists summarised, dicts as pairs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return _format_list(list(value))
    return str(value)


def _format_list(items: list[Any]) -> str:
    if not items:
        return "none"
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in items)
    if len(items) <= LONG_LIST:
        return "; ".join(_format_value(v) for v in items) if not numeric else ", ".join(map(_number, items))
    if numeric:
        return f"{len(items)} values from {_number(min(items))} to {_number(max(items))}"
    return f"{len(items)} entries, first: {_format_value(items[0])}"


def _diagnostic_rows(key: str, value: Any) -> list[tuple[str, str]]:
    """A dict, or a short list of dicts (per-replicate details), gets a row per entry."""
    if isinstance(value, dict) and value:
        return [(key, "")] + [(f"  {k}", _format_value(v)) for k, v in value.items()]
    if isinstance(value, list) and 0 < len(value) <= LONG_LIST and all(isinstance(v, dict) for v in value):
        return [(f"{key} {i + 1}", _format_value(v)) for i, v in enumerate(value)]
    return [(key, _format_value(value))]


def _log10(value: float) -> str:
    return "-inf" if value == -math.inf else f"{value:.3f}"


def _probability(log10_p: float) -> str:
    """10**log10_p in e-notation, or as a power of ten where a float would underflow."""
    return f"{10.0**log10_p:.3e}" if log10_p > -300 else f"10^{log10_p:.2f}"


def _interval_state(est: Estimate) -> str:
    if est.heuristic:
        return "[yellow]heuristic[/yellow]: the interval reflects no sampling error; no guarantee"
    if not est.trusted:
        return "[bold red]interval NOT trusted[/bold red]: a check of its assumptions failed (warnings)"
    return "[green]interval trusted[/green]"


def summary(est: Estimate, title: str, seed: int | None = None) -> Panel:
    """A readable panel: estimate (or bound), CI, whether to trust it, cost, diagnostics, warnings.

    ``seed``: the run's seed, shown when the estimate itself drew from a generator it was handed.
    """
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    low, high = est.ci_log10
    pct = f"{100 * est.confidence:g}%"
    chosen = est.settings.get("chosen_by")
    seen = math.isfinite(est.log10_p)
    table.add_row("log10 p", _log10(est.log10_p) + ("" if seen else " (no catastrophe seen)"))
    table.add_row(f"{pct} CI (log10)", f"[{_log10(low)}, {_log10(high)}]")
    bound = f"0 seen; p <= {_probability(high)} ({pct} upper bound)"
    table.add_row("p", _probability(est.log10_p) if seen else bound)
    table.add_row("state", _interval_state(est))
    if est.assumes:
        table.add_row("assumes", escape(est.assumes))
    table.add_row("method", escape(est.method + (f" (chosen by {chosen})" if chosen else "")))
    table.add_row("model calls", f"{est.n_model_calls:,}")
    table.add_row("seconds", f"{est.seconds:.2f}")
    shown_seed = est.seed if est.seed is not None else seed
    table.add_row("seed", "a caller's generator" if shown_seed is None else str(shown_seed))
    for key, value in est.diagnostics.items():
        for label, text in _diagnostic_rows(key, value):
            table.add_row(f"[dim]{escape(label)}[/dim]", escape(text))
    for warning in est.warnings:
        table.add_row("[yellow]warning[/yellow]", f"[yellow]{escape(warning)}[/yellow]")
    return Panel(table, title=escape(title), expand=False)


def _check_overrides(method: str | None, budget: int | None) -> None:
    """The command line's overrides, checked before the case's model is built (possibly trained)."""
    from .attack import check_method

    if budget is not None and budget < 1:
        raise BudgetError(f"--budget must be a positive int, got {budget}")
    if method is not None:
        check_method(method, "--method", budget)


@app.command("estimate")
def estimate_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Case file (TOML).")],
    method: Annotated[str | None, typer.Option(help="Override estimate.method of the case file.")] = None,
    budget: Annotated[int | None, typer.Option(help="Override estimate.budget (model calls).")] = None,
    seed: Annotated[int | None, typer.Option(help="Override estimate.seed.")] = None,
    trust_module: Annotated[
        list[str] | None,
        typer.Option(
            "--trust-module",
            metavar="MODULE",
            help="Let the case file name any public function of MODULE as its model factory "
            "(repeatable). Only for code you would run yourself; registered factories need no trust.",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit with status 3 when the interval is not reliable: not trusted, or heuristic.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the Estimate as JSON.")] = False,
) -> None:
    """Estimate P(catastrophe) for the model, distribution and spec of a case file.

    Exit status: 0 on success, 2 on bad input, 3 with --strict when the interval is
    not reliable (its warnings say why).
    """
    from .io import load_case

    overrides = {k: v for k, v in {"method": method, "budget": budget, "seed": seed}.items() if v is not None}
    with _bad_input_exits():
        _check_overrides(method, budget)
        case = load_case(config, trust_modules=trust_module or ())
        est = case.estimate(progress=not as_json, **overrides)
    if as_json:
        typer.echo(est.to_json())
    else:
        Console().print(summary(est, str(config), seed=case.options.seed if seed is None else seed))
    if strict and not est.reliable:
        state = "heuristic" if est.heuristic else "not trusted"
        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]--strict:[/bold red] the interval is {state}; exit status {EXIT_UNRELIABLE}"
        )
        raise typer.Exit(EXIT_UNRELIABLE)


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
    stress = "stress"
    reliability = "reliability"


@app.command("bench")
def bench_command(
    suite: Annotated[
        Suite, typer.Argument(help="'estimate' (estimators on exact cases), 'stress' (cases built to break "
                                   "adaptive estimators), 'reliability' (otbenchmark's problems beside "
                                   "OpenTURNS), 'harden', or 'lm' "
                                   "(token estimators against enumeration; with --real, SmolLM2).")
    ] = Suite.estimate,
    quick: Annotated[
        bool,
        typer.Option(
            help="The quick preset (about a minute) instead of full; writes under OUT/quick "
            "(harden: OUT/harden/quick), never over the full results."
        ),
    ] = False,
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
    if suite in (Suite.stress, Suite.reliability):
        _bench_suite(suite.value, quick, out)
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
        paths = write_report(records, _scratch(out, quick), config=config)
    Console().print(_bench_summary(summarise(records)))
    Console().print(f"report: {', '.join(str(p) for p in paths.values())}")


def _scratch(folder: Path, quick: bool) -> Path:
    """Where a benchmark writes: a quick (smoke) run goes to FOLDER/quick, leaving the full results."""
    if not quick:
        return folder
    Console().print(f"quick run: writing under {escape(str(folder / 'quick'))}")
    return folder / "quick"


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
        folder = _scratch(out / "harden", quick)
        paths = write_harden_report(records, folder, {"steps": steps, "eval_budget": budget})
    console.print(f"report: {', '.join(str(p) for p in paths.values())}")


def _bench_suite(name: str, quick: bool, out: Path) -> None:
    """The stress or reliability suite (quick: one seed at 1e4 calls, written under OUT/quick)."""
    from .bench.suites import markdown, run_suite, write_suite_report

    budgets, seeds = ((10_000,), (0,)) if quick else ((10_000, 100_000), tuple(range(5)))
    folder = out / "quick" if quick else out
    console = Console()
    with _bad_input_exits():
        records = run_suite(name, budgets=budgets, seeds=seeds,
                            progress=lambda r, done, total: console.print(
                                f"[dim]{done}/{total} {escape(r['method'])} {escape(r['case'])}[/dim]"))
        config = {"budgets": list(budgets), "seeds": list(seeds)}
        paths = write_suite_report(name, records, folder, config)
    console.print(markdown(name, records, config))
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


def _task_builder(name: str) -> Callable[[], Any]:
    """The built-in task's constructor, not yet called: building one trains its model."""
    from .bench.hardening import TASKS

    if name not in TASKS:
        raise InvalidArgumentError(f"--task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def _check_folder(path: Path | None, option: str) -> None:
    if path is not None and path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"{option} {path} exists and is not a folder")


TaskOption = Annotated[str, typer.Option(help="Built-in task: digits-mlp, digits-cnn or policy.")]


@app.command("attack")
def attack_command(
    task: TaskOption = "digits-mlp",
    budget: Annotated[int, typer.Option(help="Model calls for search and final estimate.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Seed of the search.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write attack.json here.")] = None,
) -> None:
    """Search the task's family for the input distribution on which its model is most often catastrophic."""
    from .attack import attack, check_attack_arguments

    console = Console()
    with _bad_input_exits():
        build_task = _task_builder(task)
        check_attack_arguments(budget, seed, {})
        _check_folder(out, "--out")
        chosen = build_task()
        console.print(f"family: {escape(chosen.family.constraint())}")
        result = attack(
            chosen.start_model, chosen.spec, chosen.family, budget=budget, seed=seed, progress=True
        )
    console.print(summary(result.estimate, f"worst member of the family ({task})", seed=seed))
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
    from .harden.trainer import check_harden_arguments
    from .io import save_weights

    console = Console()
    settings = {"steps": steps, "checkpoint_every": checkpoint_every, "eval_every": max(steps // 4, 1)}
    with _bad_input_exits():
        build_task = _task_builder(task)
        check_harden_arguments(seed, settings, out / "checkpoint", resume)
        _check_folder(out, "--out")
        chosen = build_task()
        result = harden(
            chosen.start_model,
            train=chosen.train,
            spec=chosen.spec,
            family=chosen.family,
            deployment=chosen.train_deployment,
            test=chosen.test,
            seed=seed,
            checkpoint_dir=out / "checkpoint",
            resume=resume,
            progress=True,
            **settings,
        )
        paths = result.report.save(out)
        save_weights(result.model, out / "model.safetensors", {"task": task, "steps": steps, "seed": seed})
    console.print(result.report.markdown())
    console.print(
        f"report: {', '.join(str(p) for p in paths.values())}; weights: {out / 'model.safetensors'}"
    )
