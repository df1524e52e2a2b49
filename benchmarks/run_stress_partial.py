"""The stress suite without its two trained-network cases (their brute-force truth was still being computed): auto, 1e4 and 1e5 calls, seeds 0-1."""
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from tailguard.bench import stress
from tailguard.bench.suites import run_suite, write_suite_report
names = [n for n in dir(stress) if n.endswith("_case")]
cases = [stress.two_scales_case(-6.0), stress.two_scales_case(-10.0),
        stress.multi_scales_case(-5.0, regions=3), stress.multi_scales_case(-8.0, regions=4),
        stress.many_regions_case(-6.0, m=20), stress.many_regions_case(-9.0, m=40),
        stress.norm_case(-8.0, d=200), stress.norm_case(-11.0, d=500), stress.spread_or_case(-7.0),
        stress.needle_case(-7.0, d=16), stress.needle_case(-10.0, d=64),
        stress.staircase_case(-8.0), stress.jump_case(-7.0),
        stress.decoy_case(-6.0), stress.decoy_case(-9.0),
        stress.slab_case(-8.0), stress.shell_case(-7.0),
        stress.ill_conditioned_case(-9.0, k=1), stress.ill_conditioned_case(-8.0, k=2)]
def say(r, d, t):
    print(f"[{d}/{t}] {r['method']} {r['case']} {r['budget']} s{r['seed']}: {r['status']} {r['estimate_log10_p']} {r['ci_log10']} truth {r['true_log10_p']:.3f} cov={r['covered']} trusted={r['trusted']} {r['reason'] or ''}", flush=True)
records = run_suite("stress", methods=["auto"], seeds=range(2), progress=say, cases=cases)
write_suite_report("stress", records, Path(__file__).parent, {"budgets": [10000, 100000], "seeds": list(range(2)), "methods": ["auto"], "cases": "all but the trained-network cases"})
print((Path(__file__).parent / "stress.md").read_text())
