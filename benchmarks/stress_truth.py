"""Recompute the truth of the trained stress cases by plain sampling; print the constants.

The trained margin network (tailguard.bench.stress_trained.trained_margin) has no closed form,
so its catastrophe probability is counted by brute force, x ~ N(0, I_8), in float64:

    python benchmarks/stress_truth.py --calibrate 100000000   # thresholds at p ~ 1e-5, 1e-6
    python benchmarks/stress_truth.py --draws 500000000       # hits at the recorded thresholds

Calibration uses a different seed from the truth run, so the recorded hit counts are
an unbiased count at fixed thresholds. Paste the printed dictionaries into stress_trained.py.
About a million draws per second on one CPU core.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from tailguard._logspace import binomial_log_ci, to_log10
from tailguard.bench import stress_trained as stress

TARGETS = {"1e-5": 1e-5, "1e-6": 1e-6}


def calibrate(draws: int) -> dict[str, float]:
    """Thresholds with about draws * p exceedances, rounded to 0.01 (midway between order statistics)."""
    _, top = stress.count_exceedances(stress.trained_margin(), [], draws, stress.TRAINED_TRUTH_SEED + 1)
    out = {}
    for key, p in TARGETS.items():
        rank = round(draws * p)
        if not 1 <= rank < len(top):
            raise SystemExit(f"--calibrate {draws} cannot place p = {p:g}: need 1 <= draws * p < {len(top)}")
        out[key] = round(0.5 * float(top[rank - 1] + top[rank]), 2)
    return out


def truth(draws: int) -> dict[str, dict[str, int]]:
    """Hits at each recorded threshold among ``draws`` draws (the case derives its CI from them)."""
    keys = list(stress.TRAINED_THRESHOLDS)
    thresholds = [stress.TRAINED_THRESHOLDS[k] for k in keys]
    hits, _ = stress.count_exceedances(stress.trained_margin(), thresholds, draws, stress.TRAINED_TRUTH_SEED)
    return {key: {"hits": h, "draws": draws} for key, h in zip(keys, hits, strict=True)}


def describe(record: dict[str, int]) -> str:
    """log10 p and its 95 % Clopper-Pearson interval, for the record's comment."""
    low, high = binomial_log_ci(record["hits"], record["draws"], 0.95)
    p = record["hits"] / record["draws"]
    point = math.log10(p) if p else -math.inf
    return f"log10 p = {point:.4f}, CI ({to_log10(low):.4f}, {to_log10(high):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibrate", type=int, default=0, help="draws for choosing thresholds")
    parser.add_argument("--draws", type=int, default=0, help="draws for the truth at the recorded thresholds")
    args = parser.parse_args()
    torch.set_num_threads(1)  # faster for these small matrices, and leaves the other cores free
    start = time.perf_counter()
    probes = stress.trained_margin()(stress.trained_probes())[:, 0].tolist()
    print("TRAINED_PROBE_MARGINS =", tuple(probes))
    if args.calibrate:
        print("TRAINED_THRESHOLDS =", calibrate(args.calibrate))
    if args.draws:
        records = truth(args.draws)
        print("TRAINED_TRUTH =", records)
        for key, record in records.items():
            print(f"# {key}: {describe(record)}")
    print(f"# {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
