"""Reproduce benchmarks/lm/smollm2.{json,md,png}: tg.estimate on SmolLM2's messages against a long plain run.

    .venv/bin/python benchmarks/run_lm_smollm2.py                    # 5 seeds, 4,096 truth messages
    .venv/bin/python benchmarks/run_lm_smollm2.py --seeds 0 --truth 1024   # a first, shorter pass

About 25 s of one CPU thread per 64 messages written and answered (on a busy 2-core
machine): each estimate (2,000 calls) takes about 7 minutes, the truth about half an
hour. Progress is kept in smollm2_progress.json beside the results, so a stopped run,
or a later one with more seeds or truth messages, resumes where it was; see
tailguard.bench.lm_smollm2. An optional positional argument names the output folder.
"""

import argparse
from pathlib import Path

import torch

from tailguard.bench.lm_smollm2 import run

if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="benchmarks/lm", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--truth", type=int, default=4096, help="plain messages for the truth")
    args = parser.parse_args()
    run(args.out, args.seeds, args.truth, say=lambda message: print(message, flush=True))
    print((args.out / "smollm2.md").read_text())
