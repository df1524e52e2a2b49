"""Reproduce benchmarks/lm/enumerable*.{json,md,png}: token estimators vs exhaustive enumeration.

    .venv/bin/python benchmarks/run_lm_enum.py                      # every model kind, about 30 minutes
    .venv/bin/python benchmarks/run_lm_enum.py --kind embedding     # one kind (transformer, embedding)
    .venv/bin/python benchmarks/run_lm_enum.py --quick              # one model, three targets

Every estimator spends 2^16 model calls on every target whose exact probability
lies in [1e-9, 1e-5] (see tailguard.bench.lm_enum). Same as `tailguard bench lm`.
An optional positional argument names the output folder (default benchmarks/lm).
"""

import argparse
from pathlib import Path

import torch

from tailguard.bench.lm_enum import KINDS, run_benchmark

if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="benchmarks/lm", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kind", action="append", choices=sorted(KINDS),
                        help="model kind to run (repeatable; default: every kind)")
    args = parser.parse_args()
    paths = run_benchmark(args.out, args.quick, progress=lambda message: print(message, flush=True),
                          kinds=args.kind)
    for key, path in paths.items():
        if key.endswith("markdown"):
            print(path.read_text())
