"""P[C | R] for Conditioned D: exact-truth cases, and hardening on the recognised-trigger task.

Usage:
    python benchmarks/run_conditioned.py [budget] [seeds] [out_dir]   # tailguard.bench.conditioned cases
    python benchmarks/run_conditioned.py trigger [steps] [out_dir]    # tailguard.tasks.recognised_trigger
Writes estimates.{jsonl,md} or trigger.{json,md} under out_dir (default benchmarks/conditioned).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from tailguard.bench.conditioned import cases, run_case, summary_table, trigger_study, trigger_table

DEFAULT_OUT = Path(__file__).parent / "conditioned"


def run_cases(budget: int, seeds: int, out: Path) -> None:
    records = []
    with (out / "estimates.jsonl").open("w") as f:
        for case in cases():
            for seed in range(seeds):
                record = run_case(case, budget, seed)
                records.append(record)
                f.write(json.dumps(record) + "\n")
                f.flush()
                print(f"{case.name} seed {seed}: {record['log10_p']:.3f} vs {case.log10_truth:.3f}",
                      flush=True)
    table = summary_table(records)
    (out / "estimates.md").write_text(
        f"# P[C | R] on Conditioned D, exact truth ({budget:,} model calls, seeds 0-{seeds - 1})\n\n"
        f"Command: `python benchmarks/run_conditioned.py {budget} {seeds}`\n\n{table}\n"
    )
    print(table)


def run_trigger(steps: int, out: Path) -> None:
    load_before = os.getloadavg()[0]
    study = trigger_study(steps=steps)
    study["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
    (out / "trigger.json").write_text(json.dumps(study, indent=1))
    table = trigger_table(study)
    (out / "trigger.md").write_text(
        "# Hardening against a recognised trigger (tailguard.tasks.recognised_trigger)\n\n"
        f"Command: `python benchmarks/run_conditioned.py trigger {steps}`; settings {study['settings']}\n\n"
        f"{table}\n\n"
        f"1-minute load average {load_before:.1f} before, {study['load_average']['after']:.1f} after "
        "(hardening seconds are wall-clock, one torch thread).\n"
    )
    print(table)


def main() -> None:
    torch.set_num_threads(1)
    args = sys.argv[1:]
    if args and args[0] == "trigger":
        out = Path(args[2]) if len(args) > 2 else DEFAULT_OUT
        out.mkdir(parents=True, exist_ok=True)
        run_trigger(int(args[1]) if len(args) > 1 else 300, out)
        return
    out = Path(args[2]) if len(args) > 2 else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    run_cases(int(args[0]) if args else 300_000, int(args[1]) if len(args) > 1 else 10, out)


if __name__ == "__main__":
    main()
