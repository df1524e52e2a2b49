"""Per-cell scan records for the scan studies (patch_sizes.py, search_sets.py).

A study runs tg.scan once per zoo model with a superset of searches and keeps every
(class, search) cell, so that search sets and scores can later be compared on the
same cells. Records are appended one JSON line per model, and a run resumes from
the models already in the file.
"""

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tailguard.bench import trojan_zoo as tz
from tailguard.scan import TriggerSearch, scan

#: model calls per (class, search) cell, as in a default scan
CALLS_PER_CELL = 12_000


def collect_cells(zoo_seed: int, path: Path, searches: list[TriggerSearch],
                  keep: Callable[[tz.ZooEntry], bool],
                  order: Callable[[list[tz.ZooEntry]], Iterable[tz.ZooEntry]] = list) -> None:
    """Append one record per zoo model that ``keep`` selects and ``path`` does not hold yet."""
    cache = tz.default_cache_dir(zoo_seed)
    entries = tz.build_zoo(cache, seed=zoo_seed, progress=False)
    images, labels = tz.scan_inputs(200, seed=0)
    done = {json.loads(line)["model"] for line in path.read_text().splitlines()} if path.is_file() else set()
    for entry in order(entries):
        if entry.name in done or not keep(entry):
            continue
        model = tz.load_zoo_model(entry, cache)
        start = time.process_time()
        rep = scan(model, images, labels, budget=CALLS_PER_CELL * 10 * len(searches), seed=0,
                   searches=searches)
        record = {
            "model": entry.name, "arch": entry.arch, "trojaned": entry.trojaned,
            "kind": entry.trigger_kind, "target": entry.target,
            "trigger": None if entry.trigger is None else entry.trigger.name,
            "cpu_seconds": time.process_time() - start,
            "cells": [{"class": c.target, "search": c.search, "log10_odds": c.log10_odds, "z": c.z,
                       "log10_p": c.estimate.log10_p, "ci_log10": list(c.estimate.ci_log10),
                       "n": c.estimate.n_model_calls} for c in rep.cells],
        }
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(entry.name, f"{record['cpu_seconds']:.0f} CPU s", flush=True)


def row(record: dict, search: str, key: str) -> list[float]:
    """One search's figure ``key`` for every class of a record, in class order."""
    cells = sorted((c for c in record["cells"] if c["search"] == search), key=lambda c: c["class"])
    return [c[key] for c in cells]
