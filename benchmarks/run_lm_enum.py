"""Reproduce benchmarks/lm/enumerable.{json,md,png}: token estimators vs exhaustive enumeration.

    .venv/bin/python benchmarks/run_lm_enum.py            # about 15 minutes on one core
    .venv/bin/python benchmarks/run_lm_enum.py --quick    # one model, a few targets

Every estimator spends 2^16 model calls on every target whose exact probability
lies in [1e-9, 1e-5] (see tailguard.bench.lm_enum).
"""

import json
import sys
from pathlib import Path

import torch

from tailguard.bench import lm_enum


def main(out: Path, quick: bool) -> None:
    torch.set_num_threads(1)
    cases = lm_enum.build_cases(model_seeds=(0,) if quick else (0, 1, 2),
                                dist_seeds=(0,) if quick else (0, 1),
                                on_case=lambda name: print("enumerated", name, flush=True))
    work = [(c, t) for c in cases for t in c.targets()]
    if quick:
        work = work[:3]
    records = []
    for i, (case, target) in enumerate(work):
        for method in lm_enum.METHODS:
            rec = lm_enum.run_case(case, target, method, seed=i)
            records.append(rec)
            print(f"[{i + 1}/{len(work)}] {case.name} t={target} {method:>9} true {rec['true_log10_p']:.2f} "
                  f"est {rec['estimate_log10_p']:.2f}", flush=True)
    summary = lm_enum.summarise(records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "enumerable.json").write_text(json.dumps(
        {"summary": summary, "records": records,
         "cases": {c.name: c.exact_log10.tolist() for c in cases}}, indent=1, default=str))
    text = lm_enum.markdown(summary, len(work), len(cases))
    (out / "enumerable.md").write_text(text + "\n![estimates vs exact](enumerable.png)\n")
    lm_enum.plot(records, out / "enumerable.png")
    print(text)


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--quick"]
    main(Path(args[0]) if args else Path("benchmarks/lm"), quick)
