"""Reproduce benchmarks/overhead.md: estimator wall time against the model's own forward passes.

    .venv/bin/python benchmarks/run_overhead.py

A 64 -> 1024 -> 1024 -> 10 ReLU MLP (about 1.1M parameters) under N(0, I): the
model alone is timed on the same number of inputs, in the same batch size, as
each estimate spends. Class 3 is made rare by lowering its bias.
"""

import time
from pathlib import Path

import torch
from torch import nn

import tailguard as tg

BUDGET = 300_000
BATCH = 32_768


def forward_seconds(model: nn.Module, n: int, dim: int) -> float:
    """Time n inputs through the model alone, in batches like the oracle's."""
    x = torch.randn(BATCH, dim)
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        done = 0
        while done < n:
            model(x[: min(BATCH, n - done)])
            done += BATCH
    return time.perf_counter() - start


def main(out: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )
    with torch.no_grad():
        model[-1].bias[3] -= 0.5  # make "class 3" a rare catastrophe
    n_params = sum(p.numel() for p in model.parameters())
    dist = tg.Gaussian(torch.zeros(64), std=1.0)
    rows = []
    for method in ("mc", "is", "splitting", "auto"):
        est = tg.estimate(model, dist, tg.ClassIs(3), method=method, budget=BUDGET, seed=0)
        alone = forward_seconds(model, est.n_model_calls, 64)
        rows.append((method, est, alone))
    lines = [
        f"# Estimator overhead ({n_params:,}-parameter MLP, {BUDGET:,}-call budget, torch threads: "
        f"{torch.get_num_threads()})",
        "",
        "| method | log10 p | 95 % CI | trusted | model calls | estimate s | model-only s | ratio |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for method, est, alone in rows:
        low, high = est.ci_log10
        trusted = "yes" if est.trusted else "no"
        ratio = est.seconds / alone
        lines.append(f"| {method} | {est.log10_p:.2f} | [{low:.2f}, {high:.2f}] | {trusted} "
                     f"| {est.n_model_calls:,} | {est.seconds:.2f} | {alone:.2f} | {ratio:.2f} |")
    lines += ["", "Warnings:", ""] + [f"- {method}: {w}" for method, est, _ in rows for w in est.warnings]
    text = "\n".join(lines) + "\n"
    (out / "overhead.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(Path("benchmarks"))
