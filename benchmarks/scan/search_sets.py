"""Which trigger searches, and which score, separate clean from patch- and warp-trojaned zoo models.

For every clean, patch- and warp-trojaned model of a zoo, tg.scan is run once with
a superset of searches (12,000 model calls per (class, search), as in a default
scan) and every (class, search) cell is kept: log10 odds, robust z and the
estimate's interval. The summary then scores each model under several search sets
and scores built from the same cells, so they are compared on the same searches
(blend-trojaned models are left out: every search set holds the blend search that
finds them, design note 009). It is the evidence behind the default searches of
``tailguard.scan``.

Usage: OMP_NUM_THREADS=1 python benchmarks/scan/search_sets.py [--zoo-seed S] [--summarise]
(records: benchmarks/scan/search-sets/zoo-seed<S>.jsonl, resumed if present; summary: the .md beside it)
"""

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from cells import collect_cells, row

from tailguard.bench.scan import auroc, interleaved
from tailguard.scan import blend_search, masked_search, patch_search, universal_search, windowed_search

OUT = Path("benchmarks/scan/search-sets")
SEARCHES = [patch_search(3), windowed_search(9, 5), windowed_search(9, 4), masked_search(9),
            blend_search(0.2), universal_search(0.1)]


def largest_z(searches: list[str]) -> Callable[[dict], tuple[float, int]]:
    """The default score over ``searches``: the largest robust z of a class, and that class."""
    def score(record: dict) -> tuple[float, int]:
        best = max((z, k) for s in searches for k, z in enumerate(row(record, s, "z")))
        return best
    return score


def variants() -> dict[str, Callable[[dict], tuple[float, int]]]:
    blend, universal, square, mask = "blend 0.2", "universal linf 0.1", "patch 3x3", "mask 9 px"
    w5, w4 = "mask 9 px in 5x5", "mask 9 px in 4x4"
    return {
        "mask 9, blend, universal (the earlier default)": largest_z([mask, blend, universal]),
        "patch 3x3, blend, universal": largest_z([square, blend, universal]),
        "patch 3x3, mask 9, blend": largest_z([square, mask, blend]),
        "mask 9 in 5x5, blend, universal": largest_z([w5, blend, universal]),
        "mask 9 in 4x4, blend, universal": largest_z([w4, blend, universal]),
        "patch 3x3, mask 9 in 5x5, blend": largest_z([square, w5, blend]),
        "patch 3x3, mask 9 in 4x4, blend": largest_z([square, w4, blend]),
        "mask 9 in 5x5, mask 9 in 4x4, blend": largest_z([w5, w4, blend]),
        "patch 3x3, mask 9 in 5x5, mask 9 in 4x4, blend": largest_z([square, w5, w4, blend]),
        "patch 3x3, mask 9 in 5x5, blend, universal": largest_z([square, w5, blend, universal]),
    }


def summarise(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    clean = [r for r in records if not r["trojaned"]]
    lines = [f"# Search sets on {path.stem}: {len(clean)} clean, "
             f"{sum(r['kind'] == 'patch' for r in records)} patch-, "
             f"{sum(r['kind'] == 'warp' for r in records)} warp-trojaned models",
             "", "Score: the largest robust z of a class over the searches named (one run of each search "
             "per model, so the sets are compared on the same cells). Target: the planted class has "
             "that largest z.", "",
             "| searches | AUROC patch | AUROC warp | clean models' largest | target right | "
             "patch-trojaned | warp-trojaned |", "|---|---|---|---|---|---|---|"]
    for name, score in variants().items():
        negative = [score(r)[0] for r in clean]
        cells = []
        for kind in ("patch", "warp"):
            mine = [r for r in records if r["kind"] == kind]
            cells.append(f"{auroc([score(r)[0] for r in mine], negative):.3f}")
        trojans = [r for r in records if r["trojaned"]]
        right = sum(score(r)[1] == r["target"] for r in trojans)
        shown = {kind: " ".join(f"{score(r)[0]:.1f}" for r in trojans if r["kind"] == kind)
                 for kind in ("patch", "warp")}
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {max(negative):.2f} | {right} / "
                     f"{len(trojans)} | {shown['patch']} | {shown['warp']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo-seed", type=int, default=0)
    parser.add_argument("--summarise", action="store_true", help="only rebuild the summary")
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    records = OUT / f"zoo-seed{args.zoo_seed}.jsonl"
    if not args.summarise:
        collect_cells(args.zoo_seed, records, SEARCHES, keep=lambda e: e.trigger_kind != "blend",
                      order=interleaved)
    summary = summarise(records)
    records.with_suffix(".md").write_text(summary)
    print(summary)
