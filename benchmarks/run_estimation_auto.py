"""auto alone on the estimation benchmark's 26 cases (3e4 and 3e5 calls, 2 seeds).

Writes benchmarks/estimation-auto/estimation.{json,md,png}; the full comparison of every
method is benchmarks/run_estimation.py.
"""

from pathlib import Path

import torch

from tailguard.bench import run_estimation_benchmark, write_report

torch.set_num_threads(1)
records = run_estimation_benchmark(methods=["auto"], budgets=[30_000, 300_000], seeds=[0, 1],
                                   preset="full",
                                   progress=lambda r, d, t: print(f"[{d}/{t}] {r['case']} {r['budget']} "
                                                                  f"{r['estimate_log10_p']} {r['covered']}",
                                                                  flush=True))
write_report(records, Path(__file__).parent / "estimation-auto",
             config={"methods": ["auto"], "budgets": [30_000, 300_000], "seeds": [0, 1]})
