"""The ``tailguard`` command: a thin layer over the Python API, one function per command.

A case file (see tailguard.io) plus a few overrides, never a wall of options.
Mistakes in the input (any TailguardError) print one red line and exit with
status 2, without a traceback; bugs still show theirs. Arguments are checked
before anything is trained or estimated. ``estimate --strict`` exits with
status 3 when the interval may not be read at its nominal confidence.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from . import __version__
from .cli_support import bad_input_exits
from .errors import BudgetError, InvalidArgumentError
from .estimators.base import DifferentiableEstimator, available, build
from .report.rows import estimate_rows
from .result import Estimate

# plain (not rich) help: typer's rich help prints a stray "<bool>" beside every flag
app = typer.Typer(
    help="Estimate, attack and harden the rarest catastrophic failures of neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_UNRELIABLE = 3


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


_STYLES = {"good": "green", "warn": "yellow", "bad": "bold red", "dim": "dim", "": ""}


def summary(est: Estimate, title: str, seed: int | None = None) -> Panel:
    """A readable panel: estimate (or bound), CI, whether to trust it, cost, diagnostics, warnings.

    ``seed``: the run's seed, shown when the estimate itself drew from a generator it was handed.
    """
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for row in estimate_rows(est, seed):
        style = _STYLES[row.tone]
        # diagnostics dim only their labels; warnings and the state colour their text too
        text_style = style if row.tone in ("warn", "bad", "good") else ""
        table.add_row(Text(row.label, style=style), Text(row.text, style=text_style))
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
    backend: Annotated[
        str | None,
        typer.Option(help="Where the model's forward passes run: 'local' (this process, the default) "
                          "or 'ray' (sharded over Ray workers; joins RAY_ADDRESS if set)."),
    ] = None,
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
    report: Annotated[
        Path | None,
        typer.Option(help="Also write estimate.html (with estimate.json and .jsonl) into this folder."),
    ] = None,
) -> None:
    """Estimate P(catastrophe) for the model, distribution and spec of a case file.

    Exit status: 0 on success, 2 on bad input, 3 with --strict when the interval is
    not reliable (its warnings say why).
    """
    from .backends import resolve_backend
    from .io import load_case

    given = {"method": method, "budget": budget, "seed": seed, "backend": backend}
    overrides = {k: v for k, v in given.items() if v is not None}
    with bad_input_exits():
        _check_overrides(method, budget)
        _check_folder(report, "--report")
        if backend is not None:
            resolve_backend(backend)  # a misspelt backend fails before the model is built
        case = load_case(config, trust_modules=trust_module or ())
        est = case.estimate(progress=not as_json, **overrides)
    used_seed = case.options.seed if seed is None else seed
    if as_json:
        typer.echo(est.to_json())
    else:
        Console().print(summary(est, str(config), seed=used_seed))
    if report is not None:
        from .report.pages import write_estimate_report

        options = {k: v for k, v in dataclasses.asdict(case.options).items() if k != "settings"}
        settings = {"case file": str(config), **options, **overrides, "seed": used_seed}
        paths = write_estimate_report(est, report, f"Estimate: {config}", settings, config.read_text())
        Console(stderr=as_json).print(f"report: {paths['html']}")
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
    with bad_input_exits():
        if part in (DemoPart.estimate, DemoPart.all):
            demo.run(console)
        if part in (DemoPart.harden, DemoPart.all):
            from . import demo_harden

            demo_harden.run(out_dir=out, steps=steps, console=console)


class Suite(StrEnum):
    estimate = "estimate"
    harden = "harden"
    lm = "lm"
    stress = "stress"
    reliability = "reliability"
    scan = "scan"


@app.command("bench")
def bench_command(
    suite: Annotated[
        Suite, typer.Argument(help="'estimate' (estimators on exact cases), 'stress' (cases built to break "
                                   "adaptive estimators), 'reliability' (otbenchmark's problems beside "
                                   "OpenTURNS), 'harden', 'lm' "
                                   "(token estimators against enumeration; with --real, SmolLM2), or "
                                   "'scan' (tg.scan, Neural Cleanse and ABS on the trojan zoo).")
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
    from . import cli_bench

    if suite is Suite.harden:
        cli_bench.harden(quick, out)
    elif suite is Suite.lm:
        cli_bench.lm(quick, out, real)
    elif suite in (Suite.stress, Suite.reliability):
        cli_bench.suite(suite.value, quick, out)
    elif suite is Suite.scan:
        cli_bench.scan(quick, out)
    else:
        cli_bench.estimation(quick, backend, out, methods, budgets, seeds)


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


@app.command("scan")
def scan_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Scan file (TOML): model and clean images.")],
    budget: Annotated[int | None, typer.Option(help="Override scan.budget (model calls).")] = None,
    seed: Annotated[int | None, typer.Option(help="Override scan.seed.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for scan.json and scan.md.")] = Path("tailguard-scan"),
    trust_module: Annotated[
        list[str] | None,
        typer.Option("--trust-module", metavar="MODULE",
                     help="Let the scan file name any public function of MODULE as its model factory."),
    ] = None,
) -> None:
    """Scan a model for a planted trigger: per class, the worst trigger any family holds, and one score."""
    from .scan import scan
    from .scan.config import load_scan_case
    from .scan.report import write_scan_report

    console = Console()
    with bad_input_exits():
        _check_folder(out, "--out")
        case = load_scan_case(config, trust_modules=trust_module or ())
        used_budget = case.options.budget if budget is None else budget
        used_seed = case.options.seed if seed is None else seed
        report = scan(case.model, case.images, case.labels, budget=used_budget, seed=used_seed,
                      **case.options.settings)
        paths = write_scan_report(report, out, f"Scan: {config}", {
            "scan file": str(config), "budget": used_budget, "seed": used_seed, **case.options.settings})
    console.print(escape(report.summary()))
    console.print(f"report: {', '.join(str(p) for p in paths.values())}")


@app.command("attack")
def attack_command(
    task: TaskOption = "digits-mlp",
    budget: Annotated[int, typer.Option(help="Model calls for search and final estimate.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Seed of the search.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Write attack.html (with attack.json and attack.jsonl) here.")
    ] = None,
) -> None:
    """Search the task's family for the input distribution on which its model is most often catastrophic."""
    from .attack import attack, check_attack_arguments

    console = Console()
    with bad_input_exits():
        build_task = _task_builder(task)
        cfg = check_attack_arguments(budget, seed, {})
        _check_folder(out, "--out")
        chosen = build_task()
        console.print(f"family: {escape(chosen.family.constraint())}")
        result = attack(
            chosen.start_model, chosen.spec, chosen.family, budget=budget, seed=seed, progress=True
        )
    console.print(summary(result.estimate, f"worst member of the family ({task})", seed=seed))
    console.print(f"member: {escape(json.dumps(result.family.describe(result.params))[:400])}")
    if out is not None:
        from .report.pages import write_attack_report

        settings = {"task": task, "budget": budget, "seed": seed, **dataclasses.asdict(cfg)}
        paths = write_attack_report(result, out, f"Attack on {task}", settings)
        console.print(f"report: {paths['html']}")


@app.command("harden")
def harden_command(
    task: TaskOption = "digits-mlp",
    steps: Annotated[int, typer.Option(help="Training steps (adversary step + model step each).")] = 600,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for report.{html,json,md,png}, steps.jsonl and "
                                           "model.safetensors.")] = Path(
        "tailguard-harden"
    ),
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in OUT/checkpoint.")] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Harden file (TOML): your model, data, spec, family and "
                                            "settings, instead of a built-in --task."),
    ] = None,
    trust_module: Annotated[
        list[str] | None,
        typer.Option("--trust-module", metavar="MODULE",
                     help="Let the harden file name any public function of MODULE as its model factory "
                          "(repeatable). Only for code you would run yourself."),
    ] = None,
) -> None:
    """Train a model against its adversary; checkpoints, resumes, writes a report and weights.

    The model is a built-in task's (--task) or your own (--config run.toml).
    """
    from .harden import harden
    from .harden.trainer import check_harden_arguments
    from .io import load_harden_run
    from .weights import save_weights

    console = Console()
    settings = {"steps": steps, "checkpoint_every": checkpoint_every, "eval_every": max(steps // 4, 1)}
    with bad_input_exits():
        if config is not None:
            run = load_harden_run(config, trust_modules=trust_module or ())
            settings, seed = {**settings, **run.settings}, run.seed
            check_harden_arguments(seed, settings, out / "checkpoint", resume)
            _check_folder(out, "--out")
            model, train, spec, family = run.model, run.train, run.spec, run.family
            deployment, test, label = run.deployment, run.test, str(config)
        else:
            build_task = _task_builder(task)
            check_harden_arguments(seed, settings, out / "checkpoint", resume)
            _check_folder(out, "--out")
            chosen = build_task()
            model, train, spec, family = chosen.start_model, chosen.train, chosen.spec, chosen.family
            deployment, test, label = chosen.train_deployment, chosen.test, task
        result = harden(model, train=train, spec=spec, family=family, deployment=deployment, test=test,
                        seed=seed, checkpoint_dir=out / "checkpoint", resume=resume, progress=True,
                        **settings)
        paths = result.report.save(out)
        save_weights(result.model, out / "model.safetensors",
                     {"source": label, "steps": settings["steps"], "seed": seed})
    console.print(result.report.markdown())
    console.print(
        f"report: {', '.join(str(p) for p in paths.values())}; weights: {out / 'model.safetensors'}"
    )
