"""Reproduce benchmarks/ray/throughput.{json,md}: model calls per second against the number of Ray workers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_ray_throughput.py [--workers 1,2] [--repeats 3]

The model is the project's ``mlp`` factory at 64 -> 1024 -> 1024 -> 10 (ReLU,
1,126,410 parameters, the size of benchmarks/overhead.md's) under N(0, I), with
class 3 made rare by lowering its bias. Each method runs with the same seed in
this process with one torch thread and on ``RayBackend(shards=k,
threads_per_worker=1)`` for each k, so every configuration computes with one
thread per worker and the comparison is fair. Throughput is model calls / the
estimate's own seconds; starting the workers (once per k, seconds: each imports
torch) is timed apart.

The configurations take turns (round r runs every method on every
configuration before round r + 1), and the speed-up is also given as the median
of per-round ratios, so that a change in the machine's load (other work on a
shared machine) falls on all of them alike. For that the local Ray is started
with as many logical CPUs as all the workers together; only one configuration
computes at a time, the others' workers wait idle. The 1-minute load average is
recorded before and after every run, and so are the CPU seconds other processes
used during it (the machine's busy time from /proc/stat less this process's and
its descendants'). Before each round the script waits (up to LOAD_WAIT_S) for the
load average to fall to QUIET_LOAD; the table calls the machine quiet only if every
round started there and no run saw other processes use more than QUIET_OTHERS_CPUS
CPUs. Otherwise its figures are marked provisional.

The workers draw their own inputs from seeds drawn here (docs/design/011-backends.md),
so each configuration gives its own estimate: the same in every round, close to the
others but not equal to them.

A model that waits 0.1 ms per row instead of computing shows whether the
workers run at the same time whatever the machine's load: 20,000 rows take
2 s on one worker and should take 1 s on two.
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
from tailguard.errors import require_extra
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


#: a 1-minute load average above this before a round means other work shared the CPUs
QUIET_LOAD = 1.2
#: other processes using more than this many CPUs on average during a run share them too
QUIET_OTHERS_CPUS = 0.15
#: seconds to wait, before each round, for the load average to fall to QUIET_LOAD
LOAD_WAIT_S = 150.0


def load() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(limit_s: float = LOAD_WAIT_S) -> float:
    """Wait (at most ``limit_s``) until the 1-minute load average is QUIET_LOAD or less; return it."""
    deadline = time.monotonic() + limit_s
    while load() > QUIET_LOAD and time.monotonic() < deadline:
        time.sleep(5.0)
    return load()


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used so far (user, nice, system, interrupts)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def our_cpu_seconds() -> tuple[dict[int, float], float]:
    """CPU seconds so far of every Ray ShardWorker descended from this process, and of this
    process with all its descendants (the workers, Ray's daemons) together."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu, workers = {}, {}, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text, command = stat.read_text(), (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # the process ended while we looked
        fields = text[text.rindex(")") + 2 :].split()  # state, ppid, ..., utime (11), stime (12)
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
        if command.startswith(b"ray::ShardWorker"):
            workers.add(pid)

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parent.get(pid, 0)
        return False

    mine = [pid for pid in cpu if ours(pid)]
    return {pid: cpu[pid] for pid in mine if pid in workers}, sum(cpu[pid] for pid in mine)


def run_one(model: nn.Module, backend: LocalBackend | RayBackend, label: str, method: str,
            budget: int, round_: int) -> dict[str, Any]:
    """One estimate on this backend: calls per second, CPU seconds of this process and of each
    worker, the result, and the load around it."""
    before, driver, (workers, ours), machine = load(), time.process_time(), our_cpu_seconds(), \
        machine_busy_seconds()
    dist = tg.Gaussian(torch.zeros(64), std=1.0)
    est = tg.estimate(model, dist, SPEC, method=method, budget=budget, seed=0, backend=backend)
    driver = time.process_time() - driver
    workers_after, ours_after = our_cpu_seconds()
    others = machine_busy_seconds() - machine - (ours_after - ours)
    spent = [s - workers.get(pid, 0.0) for pid, s in workers_after.items()]
    busy = max(spent, default=0.0) if label != "in process" else 0.0
    row = {
        "backend": label, "method": method, "round": round_, "calls": est.n_model_calls,
        "seconds": est.seconds, "calls_per_s": est.n_model_calls / est.seconds,
        "driver_cpu_s": driver, "worker_cpu_s": sorted(spent, reverse=True),
        "ours_cpu_s": ours_after - ours, "others_cpus": max(others, 0.0) / est.seconds,
        "calls_per_s_own_cores": est.n_model_calls / (driver + busy),
        "log10_p": est.log10_p, "load_before": before, "load_after": load(),
    }
    print(json.dumps(row), flush=True)
    return row


class WaitingModel(nn.Module):
    """Waits 0.1 ms per row (no CPU), then a linear map: its time on k workers measures concurrency alone."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(1e-4 * x.shape[0])
        return self.linear(x)  # type: ignore[no-any-return]


def waiting_seconds(backend: RayBackend, rows: int = 20_000) -> float:
    """Wall seconds of one no-grad call on ``rows`` rows of the waiting model, workers already loaded."""
    model = WaitingModel()
    with backend.serving(model), torch.no_grad():
        start = time.perf_counter()
        model(torch.zeros(rows, 64))
        return time.perf_counter() - start


def start_workers(model: nn.Module, backend: RayBackend) -> float:
    """Seconds to start the workers and send them the model (once per backend, not in the figures)."""
    start = time.perf_counter()
    with backend.serving(model):
        pass
    return time.perf_counter() - start


def worker_label(k: int) -> str:
    return f"ray, {k} worker{'s' if k > 1 else ''}"


def table(rows: list[dict[str, Any]], workers: list[int], key: str) -> list[str]:
    """Median ``key`` (calls per second) per method and configuration; each k workers' speed-up
    over one, as the ratio of those medians and as the median of the ratios within a round."""
    labels = ["in process"] + [worker_label(k) for k in workers]
    rate = {(r["backend"], r["method"], r["round"]): r[key] for r in rows}
    rounds = sorted({r["round"] for r in rows})
    more = [k for k in workers if k > 1]
    head = [f"{label} calls/s" for label in labels]
    head += [f"{k} workers / 1 (medians; per round)" for k in more]
    lines = [f"| method | {' | '.join(head)} |", "|---|" + "---:|" * len(head)]
    for m in METHODS:
        median = {label: statistics.median(rate[(label, m, r)] for r in rounds) for label in labels}
        cells = [f"{median[label]:,.0f}" for label in labels]
        for k in more:
            paired = statistics.median(rate[(worker_label(k), m, r)] / rate[(worker_label(1), m, r)]
                                       for r in rounds)
            cells.append(f"{median[worker_label(k)] / median[worker_label(1)]:.2f}x; {paired:.2f}x")
        lines.append(f"| {m} | {' | '.join(cells)} |")
    return lines


def main(out: Path, workers: list[int], repeats: int, budget: int) -> None:
    torch.set_num_threads(1)
    model = rare_class_model()
    ray = require_extra("ray", "ray")
    # Ray starts its workers at nice 15; at 0 they compete for a busy machine as this process does
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address="local", num_cpus=sum(workers), include_dashboard=False, logging_level="WARNING")
    backends: dict[str, LocalBackend | RayBackend] = {"in process": LocalBackend()}
    starts = {}
    for k in workers:
        backend = RayBackend(shards=k, threads_per_worker=1)
        starts[k] = start_workers(model, backend)
        backends[worker_label(k)] = backend
    waiting = {k: waiting_seconds(backends[worker_label(k)]) for k in workers}  # type: ignore[arg-type]
    rows, round_loads = [], []
    for round_ in range(repeats):
        round_loads.append(wait_for_quiet())
        rows += [run_one(model, backend, label, method, budget, round_)
                 for method in METHODS for label, backend in backends.items()]
    # one seed and one configuration (shard count) give one estimate, round after round
    same = {m: all(len({r["log10_p"] for r in rows if (r["method"], r["backend"]) == (m, label)}) == 1
                   for label in backends) for m in METHODS}
    quiet = max(round_loads) <= QUIET_LOAD and max(r["others_cpus"] for r in rows) <= QUIET_OTHERS_CPUS
    header = {
        "model": "64-1024-1024-10 ReLU MLP", "parameters": sum(p.numel() for p in model.parameters()),
        "budget": budget, "seed": 0, "rounds": repeats, "threads_per_worker": 1,
        "cpus": os.cpu_count(), "ray_cpus": ray.cluster_resources().get("CPU"),
        "machine": platform.machine(),
        "worker_start_seconds": starts, "waiting_model_seconds": waiting,
        "same_log10_p_run_to_run": same, "round_start_loads": round_loads, "quiet": quiet,
        "versions": versions(), "git": git_revision(), "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(header, indent=1, allow_nan=True))
    loads = [r["load_before"] for r in rows] + [r["load_after"] for r in rows]
    others = max(r["others_cpus"] for r in rows)
    verdict = (
        f"**Quiet machine**: every round started at a 1-minute load average <= {QUIET_LOAD} and other "
        f"processes used at most {others:.2f} CPUs during any run." if quiet else
        f"**NOT a quiet machine: provisional figures.** Rounds started at load "
        f"{', '.join(f'{v:.1f}' for v in round_loads)} (quiet: <= {QUIET_LOAD}); other processes used up "
        f"to {others:.2f} CPUs during a run (quiet: <= {QUIET_OTHERS_CPUS})."
    )
    spread = {m: [r["log10_p"] for r in rows if r["method"] == m] for m in METHODS}
    lines = [
        f"# Model calls per second against Ray workers ({header['parameters']:,}-parameter MLP, "
        f"{budget:,}-call budget, one torch thread per worker)",
        "",
        verdict,
        "",
        "Measured (model calls / the estimate's wall-clock seconds):",
        "",
        *table(rows, workers, "calls_per_s"),
        "",
        "From CPU time (model calls / (CPU seconds of this process + of the busiest worker)): what the",
        "run would take with a core for this process and for each worker and nothing else running;",
        "Ray's own daemons and the transfers' waiting are not in it:",
        "",
        *table(rows, workers, "calls_per_s_own_cores"),
        "",
        f"Median of {repeats} rounds per cell, seed 0; {os.cpu_count()} CPUs; 1-minute load average "
        f"{min(loads):.1f} to {max(loads):.1f} during the runs (per run in throughput.json). "
        f"Starting the workers and sending the model took "
        + ", ".join(f"{s:.1f} s ({worker_label(k)})" for k, s in starts.items())
        + ", once, outside the figures. Each configuration gives the same estimate in every round: "
        + ", ".join(f"{m} {'yes' if ok else 'NO'}" for m, ok in same.items())
        + "; across configurations (the workers draw from seeds of their own, so the draws differ) "
        "log10 p spans " + ", ".join(f"{min(v):.3f} to {max(v):.3f} ({m})" for m, v in spread.items()) + ".",
        "",
        "Concurrency alone (a model that waits 0.1 ms per row, no CPU; one call on 20,000 rows): "
        + ", ".join(f"{s:.2f} s on {worker_label(k)[5:]}" for k, s in waiting.items()) + ".",
        "",
        "Rerun: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_ray_throughput.py`",
    ]
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "ray")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, 1 among them")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every configuration")
    parser.add_argument("--budget", type=int, default=BUDGET, help="model calls per estimate")
    args = parser.parse_args()
    counts = sorted({int(k) for k in args.workers.split(",")})
    if 1 not in counts:
        parser.error("--workers must include 1, the baseline of the speed-ups")
    main(args.out, counts, args.repeats, args.budget)
