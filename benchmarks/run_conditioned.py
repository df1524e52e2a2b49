"""P[C | R] for Conditioned D on the exact-truth cases of tailguard.bench.conditioned.

Usage: python benchmarks/run_conditioned.py [budget] [seeds] [out_dir]
Writes out_dir/estimates.jsonl and out_dir/estimates.md (default benchmarks/conditioned).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tailguard.bench.conditioned import cases, run_case, summary_table


def main() -> None:
    torch.set_num_threads(1)
    budget = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    seeds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).parent / "conditioned"
    out.mkdir(parents=True, exist_ok=True)
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


if __name__ == "__main__":
    main()
