"""The estimation benchmark: every estimator (and OpenTURNS) on cases with known answers.

Entry point for the CLI and for scripts::

    from tailguard.bench import run_estimation_benchmark, write_report

    records = run_estimation_benchmark(
        methods=None,        # list[str] | None: default all_methods(), i.e. every registered
                             #   tailguard estimator plus "openturns-subset", "openturns-ce"
        cases=None,          # Sequence[Case] | None: default the preset's cases
        budgets=None,        # Sequence[int] | None: model-call budgets (default: preset's)
        seeds=None,          # Sequence[int] | None: seeds (default: preset's)
        backend="local",     # "local" (in-process, in order) or "ray" (one task per run;
                             #   uses a running Ray, else ray.init())
        progress=None,       # Callable[[record, done, total], None] | None, after each run
        preset="quick",      # "quick" (3 cases, budget 5k, 2 seeds: about a minute)
                             #   or "full" (26 cases, budgets 20k and 200k, 2 seeds)
    )                        # -> list[dict]: one JSON-ready record per (method, case, budget, seed)
    paths = write_report(records, "benchmarks/", config={...})  # estimation.{json,md,png}

A record has: method, case, family, true_log10_p, truth_ci_log10, truth_source, budget,
seed, status ("ok" | "skipped" | "error"), reason, estimate_log10_p, ci_log10,
covered, abs_log10_error, model_calls, seconds, heuristic, warnings.
``summarise(records)`` gives per (method, budget) the median and max |log10 error|
over runs with 1e-13 <= p <= 1e-6, CI coverage, median model calls and seconds.
"""

from .cases import Case, build_case
from .report import write_report
from .runner import PRESETS, all_methods, preset_cases, run_estimation_benchmark, summarise

__all__ = [
    "PRESETS",
    "Case",
    "all_methods",
    "build_case",
    "preset_cases",
    "run_estimation_benchmark",
    "summarise",
    "write_report",
]
