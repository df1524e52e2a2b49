"""Reproduce benchmarks/lm/lm_written.{json,md,png}: estimation on an LM-written D vs enumeration.

    .venv/bin/python benchmarks/run_lm_written.py            # about 20 minutes on one thread
    .venv/bin/python benchmarks/run_lm_written.py --quick    # one case, two targets, one seed

Every method spends 2^15 calls (policy plus LM) on every target whose exact probability
lies in [1e-9, 1e-4], 5 seeds each, beside the Gumbel-tail forecast (see
tailguard.bench.lm_written). An optional positional argument names the output folder.
"""

import argparse
from pathlib import Path

import torch

from tailguard.bench.lm_written import run_benchmark

if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="benchmarks/lm", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    paths = run_benchmark(args.out, args.quick, progress=lambda message: print(message, flush=True))
    print(paths["markdown"].read_text())
