"""The estimation sweep: every method on every case, budget and seed, locally or on Ray.

A record is a flat, JSON-ready dict per (method, case, budget, seed). Methods are
tailguard's registered estimators (whatever ``available_methods()`` lists at call
time) plus OpenTURNS' "openturns-subset" and "openturns-ce". A method that cannot
run a case (unsupported D or spec, too small a budget) gives a record with
status "skipped" and the reason; an unexpected tailguard error gives "error".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BudgetError, InvalidArgumentError, TailguardError, UnsupportedError
from ..estimate import estimate
from ..estimators.base import available
from ..result import Estimate
from .cases import Case, build_case
from .openturns_runner import OT_METHODS, run_openturns
from .openturns_runner import unsupported_reason as ot_unsupported_reason

#: the band of true p over which accuracy is summarised (1e-13 <= p <= 1e-6)
BAND_LOG10 = (-13.0, -6.0)

Record = dict[str, Any]
Progress = Callable[[Record, int, int], None]


@dataclass(frozen=True)
class Preset:
    """A named sweep: cases as (family, target log10 p), budgets and seeds."""

    cases: tuple[tuple[str, float], ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]


_TARGETS = (-3.0, -6.0, -9.0, -12.0, -15.0)
PRESETS: dict[str, Preset] = {
    "quick": Preset(
        cases=(("linear", -3.0), ("linear", -7.0), ("or", -5.0)),
        budgets=(5_000,),
        seeds=(0, 1),
    ),
    "full": Preset(
        cases=tuple((fam, t) for fam in ("linear", "and", "or", "relusum", "polar")
                    for t in _TARGETS) + (("digits", 0.0),),
        budgets=(20_000, 200_000),
        seeds=(0, 1),
    ),
}


def all_methods() -> list[str]:
    """"auto", the registered tailguard estimators, then the OpenTURNS baselines."""
    return ["auto", *available(), *OT_METHODS]


def preset_cases(name: str) -> list[Case]:
    """The cases of preset ``name`` (built once and cached)."""
    if name not in PRESETS:
        raise InvalidArgumentError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return [build_case(fam, t) for fam, t in PRESETS[name].cases]


def base_record(method: str, case: Case, budget: int, seed: int) -> Record:
    return {
        "method": method, "case": case.name, "family": case.family,
        "true_log10_p": case.true_log10_p, "truth_ci_log10": list(case.truth_ci_log10),
        "truth_source": case.truth_source, "budget": budget, "seed": seed,
        "status": "ok", "reason": None, "estimate_log10_p": None, "ci_log10": None,
        "covered": None, "abs_log10_error": None, "model_calls": 0, "seconds": 0.0,
        "heuristic": None, "trusted": None, "warnings": [],
    }


def fill_record(record: Record, est: Estimate) -> Record:
    """Add an estimate's numbers and its accuracy against the case's truth."""
    low, high = est.ci_log10
    truth = record["true_log10_p"]
    record.update({
        "estimate_log10_p": est.log10_p, "ci_log10": [low, high],
        "covered": bool(low - 1e-9 <= truth <= high + 1e-9),  # slack: rounding of exact answers
        "abs_log10_error": abs(est.log10_p - truth) if math.isfinite(est.log10_p) else math.inf,
        "model_calls": est.n_model_calls, "seconds": est.seconds,
        "heuristic": est.heuristic, "trusted": est.trusted, "warnings": list(est.warnings),
    })
    return record


def record_of(method: str, case: Case, budget: int, seed: int, run: Callable[[], Estimate]) -> Record:
    """The record of ``run()``: filled in, or "skipped" (unsupported, budget) or "error" (other failures)."""
    record = base_record(method, case, budget, seed)
    try:
        est = run()
    except (UnsupportedError, BudgetError) as exc:
        record.update(status="skipped", reason=str(exc))
        return record
    except TailguardError as exc:
        record.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        return record
    return fill_record(record, est)


def run_one(method: str, case: Case, budget: int, seed: int) -> Record:
    """One (method, case, budget, seed) run as a record."""

    def run() -> Estimate:
        if method in OT_METHODS:
            reason = ot_unsupported_reason(case.dist)
            if reason is not None:
                raise UnsupportedError(reason)
            return run_openturns(method, case.model, case.dist, case.spec, budget, seed)
        return estimate(case.model, case.dist, case.spec, method=method, budget=budget, seed=seed)

    return record_of(method, case, budget, seed, run)


def _tasks(methods: Sequence[str], cases: Sequence[Case], budgets: Sequence[int],
           seeds: Sequence[int]) -> list[tuple[str, Case, int, int]]:
    return [(m, c, b, s) for c in cases for m in methods for b in budgets for s in seeds]


def _run_local(tasks: list[tuple[str, Case, int, int]], progress: Progress | None) -> list[Record]:
    records = []
    for task in tasks:
        records.append(run_one(*task))
        if progress is not None:
            progress(records[-1], len(records), len(tasks))
    return records


def _run_ray(tasks: list[tuple[str, Case, int, int]], progress: Progress | None) -> list[Record]:
    """One Ray task per run; each case is put in the object store once. Keeps task order."""
    from ..backends.ray import connect

    ray: Any = connect()
    remote = ray.remote(run_one)
    refs = {id(c): ray.put(c) for _, c, _, _ in tasks}
    pending = [remote.remote(m, refs[id(c)], b, s) for m, c, b, s in tasks]
    order = {ref: i for i, ref in enumerate(pending)}
    records: list[Record | None] = [None] * len(tasks)
    done = 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        records[order[ready[0]]] = ray.get(ready[0])
        done += 1
        if progress is not None:
            progress(records[order[ready[0]]], done, len(tasks))  # type: ignore[arg-type]
    return [r for r in records if r is not None]


def run_estimation_benchmark(
    methods: Sequence[str] | None = None,
    cases: Sequence[Case] | None = None,
    budgets: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    backend: str = "local",
    progress: Progress | None = None,
    preset: str = "quick",
) -> list[Record]:
    """Run the sweep and return one record per (method, case, budget, seed).

    Anything left None comes from ``preset`` ("quick" or "full"); methods default to
    ``all_methods()``. backend "ray" uses the running Ray instance or starts one.
    """
    if preset not in PRESETS:
        raise InvalidArgumentError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if backend not in ("local", "ray"):
        raise InvalidArgumentError(f"backend must be 'local' or 'ray', got {backend!r}")
    methods = list(all_methods() if methods is None else methods)
    unknown = sorted(set(methods) - set(all_methods()))
    if unknown:
        raise InvalidArgumentError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(all_methods())}"
        )
    chosen = PRESETS[preset]
    tasks = _tasks(methods, preset_cases(preset) if cases is None else cases,
                   chosen.budgets if budgets is None else budgets,
                   chosen.seeds if seeds is None else seeds)
    return _run_ray(tasks, progress) if backend == "ray" else _run_local(tasks, progress)


def in_band(record: Record, slack: float = 1e-6) -> bool:
    """True p in BAND_LOG10; the slack keeps a case built for exactly 1e-6 inside."""
    return BAND_LOG10[0] - slack <= record["true_log10_p"] <= BAND_LOG10[1] + slack


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per (method, budget): accuracy in the band, CI coverage, cost, counts of skipped runs.

    Errors are over runs (cases x seeds) whose true p lies in BAND_LOG10; an estimate of
    -inf counts as an infinite error. Coverage is over all completed runs.
    """
    keys = sorted({(r["method"], r["budget"]) for r in records}, key=lambda k: (k[0], k[1]))
    rows = []
    for method, budget in keys:
        group = [r for r in records if r["method"] == method and r["budget"] == budget]
        ok = [r for r in group if r["status"] == "ok"]
        band = [r["abs_log10_error"] for r in ok if in_band(r)]
        rows.append({
            "method": method, "budget": budget, "runs": len(group), "completed": len(ok),
            "skipped": sum(r["status"] == "skipped" for r in group),
            "errors": sum(r["status"] == "error" for r in group),
            "band_runs": len(band),
            "median_abs_log10_error": median_or_none(band),
            "max_abs_log10_error": max(band) if band else None,
            "coverage": (sum(bool(r["covered"]) for r in ok) / len(ok)) if ok else None,
            "median_model_calls": median_or_none([r["model_calls"] for r in ok]),
            "median_seconds": median_or_none([r["seconds"] for r in ok]),
        })
    return rows
