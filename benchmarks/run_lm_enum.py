"""Reproduce benchmarks/lm/enumerable.{json,md,png}: token estimators vs exhaustive enumeration.

    .venv/bin/python benchmarks/run_lm_enum.py            # about 15 minutes on one core
    .venv/bin/python benchmarks/run_lm_enum.py --quick    # one model, three targets

Every estimator spends 2^16 model calls on every target whose exact probability
lies in [1e-9, 1e-5] (see tailguard.bench.lm_enum). Same as `tailguard bench lm`.
"""

import sys
from pathlib import Path

import torch

from tailguard.bench.lm_enum import run_benchmark

if __name__ == "__main__":
    torch.set_num_threads(1)
    quick = "--quick" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--quick"]
    paths = run_benchmark(Path(args[0]) if args else Path("benchmarks/lm"), quick,
                          progress=lambda message: print(message, flush=True))
    print(paths["markdown"].read_text())
