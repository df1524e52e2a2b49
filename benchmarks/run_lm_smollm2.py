"""Reproduce benchmarks/lm/smollm2.{json,md,png}: tg.estimate on SmolLM2's messages against a long plain run.

    .venv/bin/python benchmarks/run_lm_smollm2.py                    # 5 seeds, 2,048 truth messages
    .venv/bin/python benchmarks/run_lm_smollm2.py --seeds 0 --truth 1024   # a first, shorter pass
    .venv/bin/python benchmarks/run_lm_smollm2.py --report           # the report again, no model

About 25 s of one CPU thread per 64 messages written and answered (on a busy 2-core
machine): each estimate (2,000 calls) takes about 7 minutes, the truth about 20
minutes. Progress is kept in smollm2_progress.json beside the results, so a stopped run,
or a later one with more seeds or truth messages, resumes where it was; see
tailguard.bench.lm_smollm2. An optional positional argument names the output folder.
"""

import argparse
from pathlib import Path

import torch

from tailguard.bench.lm_smollm2 import report, run

if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="benchmarks/lm", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--truth", type=int, default=2048, help="plain messages for the truth")
    parser.add_argument("--report", action="store_true", help="only rewrite the report from the progress")
    args = parser.parse_args()
    if args.report:
        report(args.out)
    else:
        run(args.out, args.seeds, args.truth, say=lambda message: print(message, flush=True))
    print((args.out / "smollm2.md").read_text())
