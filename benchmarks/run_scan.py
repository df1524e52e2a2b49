"""The scan benchmark on the full zoo: tg.scan, Neural Cleanse and ABS; results in benchmarks/scan/.

Usage: OMP_NUM_THREADS=1 python benchmarks/run_scan.py [--zoo-seed S] [--out OUT] [--zoo DIR] [--shard I N]
                                                        [--only DETECTOR ...]

The zoo of seed S is built on first use (``default_cache_dir(S)``) and the records,
scan.json, scan.md and scan.png go to OUT (default benchmarks/scan/zoo-seed<S>); an
interrupted run resumes from OUT/records.jsonl. N processes with I = 0 .. N-1 share
the zoo, and the last to finish writes the full report. benchmarks/scan/scan.md
then gathers the tables of every zoo seed run so far.
"""

import argparse
from pathlib import Path

import torch

from tailguard.bench.scan import run
from tailguard.bench.trojan_zoo import default_cache_dir

SCAN_DIR = Path("benchmarks/scan")


def gather(folder: Path) -> Path:
    """folder/scan.md: the table of every zoo-seed<S>/scan.md below it, in seed order."""
    seeds = sorted(folder.glob("zoo-seed*/scan.md"),
                   key=lambda p: int(p.parent.name.removeprefix("zoo-seed")))
    parts = [p.read_text().replace("# Trojan scan benchmark", f"## {p.parent.name}", 1) for p in seeds]
    path = folder / "scan.md"
    heading = "# Trojan scan benchmark\n\nOne table per zoo seed (`zoo-seed<S>/`).\n\n"
    path.write_text(heading + "\n".join(parts))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--zoo", type=Path, default=None)
    parser.add_argument("--shard", type=int, nargs=2, default=(0, 1), metavar=("I", "N"))
    parser.add_argument("--only", nargs="+", default=None, help="tailguard, neural_cleanse and/or abs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out or SCAN_DIR / f"zoo-seed{args.zoo_seed}"
    zoo = args.zoo or default_cache_dir(args.zoo_seed)
    paths = run(out, zoo, zoo_seed=args.zoo_seed, shard=tuple(args.shard), only=args.only,
                progress=lambda message: print(message, flush=True))
    print(paths["markdown"].read_text())
    if out.parent == SCAN_DIR:
        print(f"gathered: {gather(SCAN_DIR)}")
