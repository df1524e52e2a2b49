"""From a case file to an estimate you can trust, step by step.

    python examples/estimate_walkthrough.py

1. Load examples/case.toml: it names a model factory, a safetensors weights file,
   the input distribution D (real digits plus pixel noise) and the catastrophe
   (predicting 0 on a digit that is not a 0).
2. Read back the metadata the weights file carries: the recipe of its model.
3. Estimate P[catastrophe] three independent ways. Plain sampling is the
   reference here because p is still around 1e-4, large enough to sample; the
   rare-event methods are the ones that keep working when p is 1e-12.
4. Check agreement: intervals that exclude each other mean one method is
   wrong on this case, whatever its own CI says.
"""

from pathlib import Path

import tailguard as tg
from tailguard.io import load_case
from tailguard.weights import weights_metadata

HERE = Path(__file__).resolve().parent


def main() -> None:
    case = load_case(HERE / "case.toml")
    print(f"model: {case.config.model.factory} with weights {case.config.model.weights}")
    print(f"weights metadata: {weights_metadata(HERE / case.config.model.weights)}")
    print(f"D: {case.dist!r}   spec: {case.spec!r}\n")

    runs: dict[str, tg.Estimate] = {
        "mc": case.estimate(method="mc", budget=200_000, seed=1),
        "is": case.estimate(method="is", budget=30_000),
        "splitting": case.estimate(method="splitting", budget=30_000),
    }
    for est in runs.values():
        print(est)
        for warning in est.warnings:
            print(f"    warning: {warning}")

    low, high = runs["mc"].ci_log10
    print(f"\nreference (plain sampling) 95% CI: [{low:.2f}, {high:.2f}]")
    for name in ("is", "splitting"):
        lo, hi = runs[name].ci_log10
        overlap = lo <= high and low <= hi
        print(f"{name:10s} CI [{lo:.2f}, {hi:.2f}]  {'agrees' if overlap else 'DISAGREES'}")


if __name__ == "__main__":
    main()
