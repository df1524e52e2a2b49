"""Reproduce benchmarks/estimation.{json,md,png}: every estimator on the cases with known answers.

    .venv/bin/python benchmarks/run_estimation.py            # about 40 minutes on 2 cores
    .venv/bin/python benchmarks/run_estimation.py --auto-only   # auto again, the others' records kept

``auto`` (what users get) runs with 10 seeds, for CI coverage, at 1e4, 3e4 and 3e5 model
calls (1e4 shows the time it needs to match OpenTURNS at 3e5); the other methods, OpenTURNS
included, with 3 seeds at 3e4 and 3e5 model calls.
"""

import sys
import time
from pathlib import Path

import torch

from tailguard.bench import preset_cases, run_estimation_benchmark, write_report
from tailguard.report.log import read_log

BUDGETS = (30_000, 300_000)
AUTO_BUDGETS = (10_000, *BUDGETS)


def main(out: Path, auto_only: bool = False) -> None:
    torch.set_num_threads(1)
    cases = preset_cases("full")
    started = time.perf_counter()

    def progress(record, done, total):
        err = record["abs_log10_error"]
        print(
            f"[{done}/{total}] {record['method']:>17} {record['case']:<22} {record['budget']:>7} "
            f"seed {record['seed']} {record['status']} err={err}",
            flush=True,
        )

    records = run_estimation_benchmark(
        methods=["auto"], cases=cases, budgets=AUTO_BUDGETS, seeds=range(10), progress=progress
    )
    others = ["is", "splitting", "moments", "mc", "openturns-subset", "openturns-ce"]
    if auto_only:  # the other methods do not depend on auto's policy: keep their committed records
        records += [r for r in read_log(out / "estimation.json")[1] if r["method"] in others]
    else:
        records += run_estimation_benchmark(
            methods=others, cases=cases, budgets=BUDGETS, seeds=range(3), progress=progress
        )
    config = {
        "budgets": {"auto": list(AUTO_BUDGETS), "others": list(BUDGETS)},
        "seeds": {"auto": 10, "others": 3},
        "seconds": time.perf_counter() - started,
    }
    print(write_report(records, out, config=config))


if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    folders = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(Path(folders[0]) if folders else Path("benchmarks"), auto_only="--auto-only" in flags)
