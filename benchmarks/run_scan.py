"""The scan benchmark on the full zoo: tg.scan, Neural Cleanse and ABS; results in benchmarks/scan/.

Usage: OMP_NUM_THREADS=1 python benchmarks/run_scan.py [OUT] [ZOO_DIR] [SHARD N]
(the same as ``tailguard bench scan``; an interrupted run resumes from OUT/records.jsonl;
N processes with SHARD = 0 .. N-1 share the zoo, and the last to finish writes the full report).
"""

import sys
from pathlib import Path

import torch

from tailguard.bench.scan import run
from tailguard.bench.trojan_zoo import default_cache_dir

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/scan")
    zoo = Path(sys.argv[2]) if len(sys.argv) > 2 else default_cache_dir()
    shard = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (0, 1)
    paths = run(out, zoo, shard=shard, progress=lambda message: print(message, flush=True))
    print(paths["markdown"].read_text())
