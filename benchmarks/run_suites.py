"""Run the stress or reliability suite and write benchmarks/<suite>.{json,jsonl,md,html}.

    .venv/bin/python benchmarks/run_suites.py stress 5 auto          # about 15 minutes on 2 cores
    .venv/bin/python benchmarks/run_suites.py reliability 5          # auto and the OpenTURNS baselines
    .venv/bin/python benchmarks/run_suites.py stress 5 is,splitting parts   # into benchmarks/parts/
    .venv/bin/python benchmarks/run_suites.py stress 5-9 auto heldout       # seeds no setting was chosen on

Arguments: suite, number of seeds (default 5) or a range of them ("5-9"), methods (default,
or "", the suite's), folder under benchmarks/ or an absolute path (default benchmarks/ itself).
"""

import sys
from pathlib import Path

import torch

from tailguard.bench.suites import run_suite, write_suite_report

torch.set_num_threads(1)
suite = sys.argv[1]
spelled = sys.argv[2] if len(sys.argv) > 2 else "5"
first, _, last = spelled.partition("-")
seeds = tuple(range(int(first), int(last) + 1)) if last else tuple(range(int(first)))
methods = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else None
budgets = (10_000, 100_000)


def say(record, done, total):
    print(f"[{done}/{total}] {record['method']} {record['case']} {record['budget']} seed {record['seed']}: "
          f"{record['status']} {record['estimate_log10_p']} {record['ci_log10']} "
          f"(truth {record['true_log10_p']:.3f}) covered={record['covered']}", flush=True)


records = run_suite(suite, methods=methods, budgets=budgets, seeds=seeds, progress=say)
folder = Path(__file__).parent / (sys.argv[4] if len(sys.argv) > 4 else "")
paths = write_suite_report(suite, records, folder,
                           {"budgets": list(budgets), "seeds": list(seeds), "methods": methods})
print(paths["markdown"].read_text())
