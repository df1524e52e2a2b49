"""How far square patches of each size reach each class: clean and patch-trojaned zoo models.

For every clean and every patch-trojaned model of a zoo, tg.scan is run with
patch searches of sizes 1..5 beside the default blend and universal searches
(12,000 model calls per (class, search), as in the default scan), and each
(class, search) cell's log10 odds and robust z are kept. The summary says, per
patch size, how many classes of a clean model reach the resolution limit of
their estimate (an optimised patch of that size sends every input to them) and,
per trojaned model, where its planted class ranks at each size. It is the
evidence behind the default patch size of ``tailguard.scan`` (design note 009).

Usage: OMP_NUM_THREADS=1 python benchmarks/scan/patch_sizes.py [--zoo-seed S] [--areas A ...] [--summarise]
(records: benchmarks/scan/patch-sizes/zoo-seed<S>.jsonl, resumed if present; the
summary: the .md beside it. About 36 minutes for the seed-0 zoo on a shared 2-CPU machine.
With --areas 6 9 12: masked searches of those areas (masks-zoo-seed<S>.jsonl and .md),
judged beside the blend and universal cells of the patch-size records.)
"""

import argparse
import json
import statistics
from pathlib import Path

import torch
from cells import collect_cells, row

from tailguard.bench import trojan_zoo as tz
from tailguard.scan import blend_search, masked_search, patch_search, universal_search
from tailguard.scan.score import robust_z

SIZES = (1, 2, 3, 4, 5)
OUT = Path("benchmarks/scan/patch-sizes")


def patch_or_clean(entry: tz.ZooEntry) -> bool:
    """The models this study scans: the clean and the patch-trojaned ones."""
    return not entry.trojaned or entry.trigger_kind == "patch"


def _smallest_size(odds_by_size: list[float], sizes: tuple[int, ...], level: float) -> float:
    """The patch side at which the log10 odds first reach ``level`` (linear between sizes; else last + 1)."""
    for i, v in enumerate(odds_by_size):
        if v >= level:
            if i == 0:
                return float(sizes[0])
            a = odds_by_size[i - 1]
            return sizes[i - 1] + (sizes[i] - sizes[i - 1]) * (level - a) / (v - a)
    return float(sizes[-1] + 1)


def variants(record: dict) -> dict[str, float]:
    """The model's score under alternative uses of the same cells (larger = more suspect)."""
    z = {c: row(record, c, "z") for c in {c["search"] for c in record["cells"]}}
    others = ["blend 0.2", "universal linf 0.1"]

    def largest(searches: list[str]) -> float:
        return max(max(z[s]) for s in searches)

    ladder = (2, 3, 4, 5)
    odds = [row(record, f"patch {k}x{k}", "log10_odds") for k in ladder]
    sizes = [_smallest_size(list(per_class), ladder, 1.0) for per_class in zip(*odds, strict=True)]
    size_z = robust_z([-v for v in sizes], 0.5)
    return {
        "default (patch 3x3, blend, universal): largest z": largest(["patch 3x3", *others]),
        "+ patch 2x2": largest(["patch 2x2", "patch 3x3", *others]),
        "+ patch 4x4": largest(["patch 3x3", "patch 4x4", *others]),
        "+ patch 2x2 and 4x4": largest(["patch 2x2", "patch 3x3", "patch 4x4", *others]),
        "sum of a class's z over the defaults": max(
            sum(v) for v in zip(z["patch 3x3"], *(z[s] for s in others), strict=True)),
        "size ladder 2..5 (smallest side at log10 odds 1, z floor 0.5 px), blend, universal":
            max(max(size_z), largest(others)),
    }


def auroc(positive: list[float], negative: list[float]) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def summarise(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    clean = [r for r in records if not r["trojaned"]]
    trojans = [r for r in records if r["trojaned"]]
    ceiling = max(max(row(r, "patch 5x5", "log10_odds")) for r in records) - 0.01
    lines = [
        f"# Patch sizes on {path.stem}: {len(clean)} clean, {len(trojans)} patch-trojaned models",
        "",
        "Per patch size, over the clean models: classes whose estimate is at its resolution limit "
        f"(log10 odds >= {ceiling:.2f}, every call catastrophic), the largest log10 odds of a class, "
        "and the largest robust z of a class.",
        "",
        "| patch | clean models with a class at the limit | classes at the limit (median) "
        "| top class log10 odds (median) | largest z (median) | largest z (max) |",
        "|---|---|---|---|---|---|",
    ]
    for k in SIZES:
        name = f"patch {k}x{k}"
        at_limit = [sum(v >= ceiling for v in row(r, name, "log10_odds")) for r in clean]
        top = [max(row(r, name, "log10_odds")) for r in clean]
        zmax = [max(row(r, name, "z")) for r in clean]
        lines.append(f"| {k}x{k} | {sum(n > 0 for n in at_limit)} / {len(clean)} | "
                     f"{statistics.median(at_limit):g} | {statistics.median(top):.2f} | "
                     f"{statistics.median(zmax):.2f} | {max(zmax):.2f} |")
    lines += ["", "Per trojaned model, its planted class at each patch size: log10 odds (rank among "
              "the 10 classes, robust z).", "",
              "| model | trigger | " + " | ".join(f"{k}x{k}" for k in SIZES) + " |",
              "|---|---|" + "---|" * len(SIZES)]
    for r in trojans:
        cells = []
        for k in SIZES:
            odds, z = row(r, f"patch {k}x{k}", "log10_odds"), row(r, f"patch {k}x{k}", "z")
            t = r["target"]
            rank = 1 + sum(v > odds[t] for v in odds)
            cells.append(f"{odds[t]:.2f} (#{rank}, {z[t]:.1f})")
        lines.append(f"| {r['model']} | {r['trigger']} | " + " | ".join(cells) + " |")
    scored = {r["model"]: variants(r) for r in records}
    lines += ["", "Patch-trojaned against clean models under other scores built from the same cells "
              "(one run: differences of a few hundredths are one or two pairs of models).", "",
              "| score | AUROC | clean models' largest | trojaned models |", "|---|---|---|---|"]
    for name in scored[records[0]["model"]]:
        negative = [scored[r["model"]][name] for r in clean]
        positive = [scored[r["model"]][name] for r in trojans]
        lines.append(f"| {name} | {auroc(positive, negative):.3f} | {max(negative):.2f} | "
                     + " ".join(f"{v:.1f}" for v in positive) + " |")
    return "\n".join(lines) + "\n"


def summarise_masks(path: Path, sizes_path: Path) -> str:
    """Masked searches of several areas, each beside the blend and universal cells of ``sizes_path``."""
    masks = {r["model"]: r for r in map(json.loads, path.read_text().splitlines())}
    sizes = {r["model"]: r for r in map(json.loads, sizes_path.read_text().splitlines())}
    models = [m for m in masks if m in sizes]
    clean = [m for m in models if not masks[m]["trojaned"]]
    trojans = [m for m in models if masks[m]["trojaned"]]
    searches = list(dict.fromkeys(c["search"] for c in masks[models[0]]["cells"]))
    title = f"# Masked searches on {sizes_path.stem}: {len(clean)} clean, {len(trojans)} patch-trojaned"
    lines = [title,
             "", "Largest robust z over a mask search of the given area, the blend 0.2 and the universal "
             "linf 0.1 search (the last two from the patch-size records).", "",
             "| mask search | AUROC | clean models' largest | trojaned models |", "|---|---|---|---|"]
    others = ["blend 0.2", "universal linf 0.1"]
    for search in ["patch 3x3", *searches]:
        def score(m: str, search: str = search) -> float:
            source = masks[m] if search in searches else sizes[m]
            return max(max(row(source, search, "z")), *(max(row(sizes[m], o, "z")) for o in others))
        negative, positive = [score(m) for m in clean], [score(m) for m in trojans]
        lines.append(f"| {search} | {auroc(positive, negative):.3f} | {max(negative):.2f} | "
                     + " ".join(f"{v:.1f}" for v in positive) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo-seed", type=int, default=0)
    parser.add_argument("--summarise", action="store_true", help="only rebuild the summary")
    parser.add_argument("--areas", type=float, nargs="+", default=None,
                        help="masked searches of these areas instead of the patch sizes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    records = OUT / f"zoo-seed{args.zoo_seed}.jsonl"
    if args.areas is None:
        if not args.summarise:
            collect_cells(args.zoo_seed, records,
                          [*(patch_search(k) for k in SIZES), blend_search(0.2), universal_search(0.1)],
                          patch_or_clean)
        summary = summarise(records)
        target = records.with_suffix(".md")
    else:
        masked = OUT / f"masks-zoo-seed{args.zoo_seed}.jsonl"
        if not args.summarise:
            collect_cells(args.zoo_seed, masked, [masked_search(a) for a in args.areas], patch_or_clean)
        summary = summarise_masks(masked, records)
        target = masked.with_suffix(".md")
    target.write_text(summary)
    print(summary)
