"""Reproduce benchmarks/harden/harden.{json,md,png}: harden and its baselines on planted catastrophes.

.venv/bin/python benchmarks/run_harden.py            # about 15 minutes on 2 cores
"""

import sys
import time
from pathlib import Path

import torch

from tailguard.bench.harden_report import write_harden_report
from tailguard.bench.hardening import METHODS, TASKS, run_harden_benchmark

STEPS = 600
EVAL_BUDGET = 100_000


def main(out: Path) -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    records = run_harden_benchmark(
        tasks=list(TASKS), methods=list(METHODS), steps=STEPS, eval_budget=EVAL_BUDGET, progress=print
    )
    config = {
        "steps": STEPS,
        "eval_budget": EVAL_BUDGET,
        "eval_method": "auto",
        "seed": 0,
        "seconds": time.perf_counter() - started,
    }
    print(write_harden_report(records, out, config))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/harden"))
