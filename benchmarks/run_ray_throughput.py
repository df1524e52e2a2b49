"""Reproduce benchmarks/ray/throughput.{json,md}: model calls per second against the number of Ray workers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_ray_throughput.py [--workers 1,2] [--repeats 3]

The model is the project's ``mlp`` factory at 64 -> 1024 -> 1024 -> 10 (ReLU,
1,126,410 parameters, the size of benchmarks/overhead.md's) under N(0, I), with
class 3 made rare by lowering its bias. Each method
runs with the same seed in this process with one torch thread, then with
``RayBackend(shards=k, threads_per_worker=1)`` for each k, so every
configuration computes with one thread per worker and the comparison is fair.
Throughput is model calls / the estimate's own seconds; starting the workers
(once per k, seconds: each imports torch) is timed apart. The machine's load
(``os.getloadavg``) is recorded before and after every configuration: on a
shared machine other work takes cores from the workers and the figures show it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tailguard as tg
from tailguard.backends import LocalBackend, RayBackend
from tailguard.backends.ray import connect
from tailguard.models import mlp
from tailguard.report.log import git_revision, versions

BUDGET = 300_000
METHODS = ("mc", "is", "splitting")
SPEC = tg.ClassIs(3)


def rare_class_model() -> nn.Module:
    """A 1.1M-parameter MLP from seed 0 whose class 3 is rare under N(0, I)."""
    model = mlp(64, 1024, 10, depth=2, seed=0)
    with torch.no_grad():
        model[-1].bias[3] -= 0.5  # make "class 3" a rare catastrophe
    return model


def load() -> float:
    return os.getloadavg()[0]


def measure(
    model: nn.Module, backend: LocalBackend | RayBackend, label: str, repeats: int
) -> list[dict[str, Any]]:
    """Every method ``repeats`` times on this backend: calls per second, the estimate, the load."""
    dist = tg.Gaussian(torch.zeros(64), std=1.0)
    rows = []
    for method in METHODS:
        for repeat in range(repeats):
            before = load()
            est = tg.estimate(model, dist, SPEC, method=method, budget=BUDGET, seed=0, backend=backend)
            rows.append({
                "backend": label, "workers": getattr(backend, "shards", None), "method": method,
                "repeat": repeat, "calls": est.n_model_calls, "seconds": est.seconds,
                "calls_per_s": est.n_model_calls / est.seconds, "log10_p": est.log10_p,
                "load_before": before, "load_after": load(),
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def start_workers(model: nn.Module, backend: RayBackend) -> float:
    """Seconds to start the workers and send them the model (once per backend, not in the figures)."""
    start = time.perf_counter()
    with backend.serving(model):
        pass
    return time.perf_counter() - start


def worker_label(k: int) -> str:
    return f"ray, {k} worker{'s' if k > 1 else ''}"


def table(rows: list[dict[str, Any]], workers: list[int]) -> list[str]:
    """Median calls per second per method and configuration, and each k workers' speed-up over one."""
    labels = ["in process"] + [worker_label(k) for k in workers]
    median = {
        (label, m): statistics.median(
            r["calls_per_s"] for r in rows if r["backend"] == label and r["method"] == m
        )
        for label in labels
        for m in METHODS
    }
    more = [k for k in workers if k > 1]
    head = " | ".join([f"{label} calls/s" for label in labels] + [f"{k} workers / 1" for k in more])
    lines = [f"| method | {head} |", "|---|" + "---:|" * (len(labels) + len(more))]
    for m in METHODS:
        cells = [f"{median[(label, m)]:,.0f}" for label in labels]
        one = median[(worker_label(1), m)]
        cells += [f"{median[(worker_label(k), m)] / one:.2f}x" for k in more]
        lines.append(f"| {m} | {' | '.join(cells)} |")
    return lines


def main(out: Path, workers: list[int], repeats: int) -> None:
    torch.set_num_threads(1)
    model = rare_class_model()
    ray = connect()
    rows = measure(model, LocalBackend(), "in process", repeats)
    starts = {}
    for k in workers:
        backend = RayBackend(shards=k, threads_per_worker=1)
        starts[k] = start_workers(model, backend)
        rows += measure(model, backend, worker_label(k), repeats)
        backend.close()  # its CPUs go to the next configuration's workers
    same = {m: len({r["log10_p"] for r in rows if r["method"] == m}) == 1 for m in METHODS}
    header = {
        "model": "64-1024-1024-10 ReLU MLP", "parameters": sum(p.numel() for p in model.parameters()),
        "budget": BUDGET, "seed": 0, "repeats": repeats, "threads_per_worker": 1,
        "cpus": os.cpu_count(), "ray_cpus": ray.cluster_resources().get("CPU"),
        "machine": platform.machine(),
        "worker_start_seconds": starts, "same_log10_p_everywhere": same,
        "versions": versions(), "git": git_revision(), "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(header, indent=1, allow_nan=True))
    loads = [r["load_before"] for r in rows] + [r["load_after"] for r in rows]
    lines = [
        f"# Model calls per second against Ray workers ({header['parameters']:,}-parameter MLP, "
        f"{BUDGET:,}-call budget, one torch thread per worker)",
        "",
        *table(rows, workers),
        "",
        f"Median of {repeats} runs per cell, seed 0; {os.cpu_count()} CPUs; 1-minute load average "
        f"{min(loads):.1f} to {max(loads):.1f} during the runs (per run in throughput.json). "
        f"Starting the workers and sending the model took "
        + ", ".join(f"{s:.1f} s ({worker_label(k)})" for k, s in starts.items())
        + ", once, outside the figures. The estimate is the same in every configuration: "
        + ", ".join(f"{m} {'yes' if ok else 'NO'}" for m, ok in same.items()) + ".",
        "",
        "Rerun: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_ray_throughput.py`",
    ]
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "ray")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, 1 among them")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    counts = sorted({int(k) for k in args.workers.split(",")})
    if 1 not in counts:
        parser.error("--workers must include 1, the baseline of the speed-ups")
    main(args.out, counts, args.repeats)
