"""auto on the digits case (noisy empirical D over 1,797 images, true log10 p = -4.56).

    .venv/bin/python benchmarks/run_digits_auto.py     # 5 seeds at 3e4 and 3e5 calls, ~10 minutes

Prints budget, seed, estimate, CI, whether the CI covers the truth, and whether it is trusted.
"""

import torch

import tailguard as tg
from tailguard.bench.cases import build_case

torch.set_num_threads(1)
case = build_case("digits", 0.0)
for budget in (30_000, 300_000):
    for seed in range(5):
        est = tg.estimate(case.model, case.dist, case.spec, budget=budget, seed=seed)
        low, high = est.ci_log10
        covered = low <= case.true_log10_p <= high
        print(budget, seed, round(est.log10_p, 3), round(low, 3), round(high, 3), covered, est.trusted,
              flush=True)
