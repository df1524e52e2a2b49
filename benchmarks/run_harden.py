"""Reproduce benchmarks/harden/: harden and its baselines on planted catastrophes, over seeds.

.venv/bin/python benchmarks/run_harden.py [OUT] [TASK:METHODS:SEEDS ...]

Each TASK:METHODS:SEEDS names a task (``tailguard.bench.hardening.TASKS``), methods
separated by commas (``harden``, ``standard``, ``finetune_adversary``, ``pgd``, ``lat``)
and seeds (``0-4`` or ``0,2``); an optional fourth part NAME=VALUE,... sets harden
settings other than the defaults (e.g. ``adversary_floor=-6.9``), named in the records.
Default: every method on digits-mlp for seeds 0-4, ``harden`` and ``standard`` on the
other tasks for seeds 0-4. Every record is appended
to OUT/records.jsonl as it lands (a later run with the same OUT adds to it, and judges
the references start and clean only for tasks OUT has none of yet), every
judged model's weights go to OUT/weights/ with their SHA-256 in the record, and the
report (OUT/harden.{json,md,png,html}) is rewritten from all the records after each run.
One torch thread per process.

.venv/bin/python benchmarks/run_harden.py OUT --rejudge [TASK:LABELS:SEEDS ...]

judges kept runs again with the current judge, from their weights in OUT/weights/ (checked
against the records' SHA-256), without retraining; LABELS are the records' method labels
(``harden``, ``harden@6568c7e``, ``start``). Each record is replaced in OUT/records.jsonl.
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from tailguard.bench.harden_report import write_harden_report
from tailguard.bench.hardening import METHODS, TASKS, rejudge, run_harden_benchmark
from tailguard.harden.judge import JudgeSettings

STEPS = 600
JUDGE = JudgeSettings(budget=20_000, sampling_budget=200_000, attack_budget=30_000)
DEFAULT = [f"digits-mlp:{','.join(METHODS)}:0-4", "digits-mlp-ring:harden,standard:0-4",
           "policy:harden,standard:0-4", "digits-cnn:harden,standard:0-4"]


def seeds_of(text: str) -> tuple[int, ...]:
    if "-" in text:
        low, high = text.split("-")
        return tuple(range(int(low), int(high) + 1))
    return tuple(int(s) for s in text.split(","))


def main(out: Path, runs: list[str]) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "records.jsonl"
    config = {"steps": STEPS, "judge": dataclasses.asdict(JUDGE), "runs": runs}
    earlier = read_records(log)
    seen = {r["task"] for r in earlier if r["method"] == "start"}
    for run in runs:
        task, methods, seeds, *rest = run.split(":")
        overrides = {k: float(v) for k, v in (kv.split("=") for kv in rest[0].split(","))} if rest else {}
        # the references (start, clean) do not depend on harden's settings: judged once per task
        # (not again when OUT already holds them)
        first, _ = task not in seen and not overrides, seen.add(task)
        started = time.perf_counter()

        def keep(record: dict) -> None:
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")

        run_harden_benchmark(tasks=[task], methods=methods.split(","), steps=STEPS, seeds=seeds_of(seeds),
                             judge_settings=JUDGE, weights_dir=out / "weights", progress=print,
                             on_record=keep, references=first, harden_settings=overrides)
        print(f"{run}: {time.perf_counter() - started:.0f} s")
        print(write_harden_report(read_records(log), out, config))


def read_records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def write_records(log: Path, records: list[dict]) -> None:
    """Rewrite the log whole (through a temporary file, so a killed run leaves the old one)."""
    partial = log.with_suffix(".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in records))
    partial.replace(log)


def main_rejudge(out: Path, runs: list[str]) -> None:
    torch.set_num_threads(1)
    log = out / "records.jsonl"
    config = {"steps": STEPS, "judge": dataclasses.asdict(JUDGE), "runs": runs}
    tasks = {}
    for run in runs:
        task_name, labels, seeds = run.split(":")
        for i, record in enumerate(read_records(log)):
            chosen = record["task"] == task_name and record["method"] in labels.split(",")
            if not chosen or record["seed"] not in seeds_of(seeds) or record.get("status") == "skipped":
                continue
            started = time.perf_counter()
            task = tasks.setdefault(task_name, TASKS[task_name]())
            records = read_records(log)
            records[i] = rejudge(record, task, out / "weights", JUDGE)
            write_records(log, records)
            print(f"{task_name} {record['method']} seed {record['seed']} rejudged: "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    print(write_harden_report(read_records(log), out, config))


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/harden")
    if sys.argv[2:3] == ["--rejudge"]:
        main_rejudge(folder, sys.argv[3:])
    else:
        main(folder, sys.argv[2:] or DEFAULT)
