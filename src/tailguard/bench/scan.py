"""The scan benchmark: ``tg.scan``, Neural Cleanse and ABS on the trojan zoo, same models, same inputs.

Every detector sees the same held-out clean digits (``trojan_zoo.scan_inputs``)
with their labels and the same seed. A record per (model, detector) holds the
score, the suspected target, the overlap of the recovered trigger area with the
true one and the seconds; records are appended to ``records.jsonl`` as they
come, so an interrupted run resumes where it stopped. Every record carries the
fingerprint of the run that made it (the settings, the zoo's manifest and the
source of the package): a run refuses to resume a detector's records that another
version of the code or other settings wrote, since mixing them would report a
detector that no longer exists; detectors it does not run keep their records and
the report lists each detector's fingerprint. The metrics, per trigger
kind (each kind's trojaned models against all clean ones) and over the zoo:

- AUROC: the chance that a trojaned model outscores a clean one (ties count half);
- TPR at 5 % FPR: trojaned models above the threshold that at most 5 % of the
  clean models exceed;
- correct target: among the trojaned models detected at that threshold, the
  share whose suspected class is the planted target;
- overlap: intersection over union of the recovered trigger area (mask > 0.5)
  and the area the trigger acts on (the whole image for blends and warps);
- seconds: the median per model, wall-clock and CPU time of the process (on a
  shared machine the wall-clock time depends on what else runs).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError, require_extra
from ..families.masked import MaskedPatternFamily
from ..families.patch import PatchFamily
from ..scan import ScanReport, scan
from .detectors import abs_scan, neural_cleanse
from .trojan_zoo import TRIGGER_KINDS, ZooEntry, build_zoo, load_zoo_model, scan_inputs

RECORDS = "records.jsonl"
MAX_FPR = 0.05

#: what a detector finds: (score, suspected target, recovered trigger area (8, 8) or None)
Finding = tuple[float, int | None, Tensor | None]
#: a detector: (model, images (N, 8, 8), labels (N,), seed) -> its finding
Detector = Callable[[nn.Module, Tensor, Tensor, int], Finding]


def scan_trigger_mask(report: ScanReport) -> Tensor:
    """The area (H, W) the scan's worst member changes: its patch, its mask, or the whole image."""
    family, params = report.witness.attack.family, report.witness.attack.params
    shape = family.event_shape[-2:]
    mask = torch.zeros(shape)
    if isinstance(family, MaskedPatternFamily):
        return family.mask(params).detach().float()
    if isinstance(family, PatchFamily):
        row, col, k = int(params["row"]), int(params["col"]), family.patch_size
        mask[row : row + k, col : col + k] = 1.0
        return mask
    return torch.ones(shape)


def tailguard_detector(budget: int, **settings: Any) -> Detector:
    def run(model: nn.Module, images: Tensor, labels: Tensor, seed: int) -> Finding:
        rep = scan(model, images, labels, budget=budget, seed=seed, **settings)
        return rep.score, rep.ranking[0], scan_trigger_mask(rep)

    return run


def _neural_cleanse(model: nn.Module, images: Tensor, labels: Tensor, seed: int) -> Finding:
    v = neural_cleanse(model, images, labels, seed=seed)
    return v.score, v.target, v.trigger_mask


def _abs(model: nn.Module, images: Tensor, labels: Tensor, seed: int) -> Finding:
    v = abs_scan(model, images, labels, seed=seed)
    return v.score, v.target, v.trigger_mask


def detectors(scan_budget: int, **scan_settings: Any) -> dict[str, Detector]:
    """The three detectors of the benchmark, by the names its tables use."""
    return {
        "tailguard": tailguard_detector(scan_budget, **scan_settings),
        "neural_cleanse": _neural_cleanse,
        "abs": _abs,
    }


def overlap(found: Tensor | None, true: Tensor | None) -> float | None:
    """Intersection over union of found > 0.5 and true > 0.5 (both (H, W)); None if either is missing."""
    if found is None or true is None:
        return None
    a, b = found.detach().float() > 0.5, true.float() > 0.5
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else None


def run_one(entry: ZooEntry, model: nn.Module, name: str, detector: Detector,
            images: Tensor, labels: Tensor, seed: int) -> dict[str, Any]:
    """One detector on one zoo model: a record, with the error's text instead of a score if it failed."""
    record: dict[str, Any] = {
        "model": entry.name, "arch": entry.arch, "width": entry.width, "trojaned": entry.trojaned,
        "kind": entry.trigger_kind, "true_target": entry.target, "detector": name, "seed": seed,
    }
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        score, target, mask = detector(model, images, labels, seed)
    except Exception as exc:  # a detector's failure on one model is a result, not the end of the run
        return {**record, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - start}
    return {
        **record, "score": score, "target": target, "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "overlap": overlap(mask, entry.trigger_mask) if entry.trojaned else None,
        "target_correct": (target == entry.target) if entry.trojaned else None,
    }


def read_records(
    path: Path, fingerprint: str, detectors: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The records of ``path`` (none if absent), checked against this run's ``fingerprint``.

    A detector's figures must all come from one run, so the records of the
    ``detectors`` this run adds (default: every detector present) must carry its
    fingerprint; InvalidArgumentError otherwise. Other detectors' records stay as
    they are: each detector's metrics use its own records only.
    """
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    mine = [r for r in records if detectors is None or r["detector"] in detectors]
    foreign = sorted({str(r.get("fingerprint")) for r in mine} - {fingerprint})
    if foreign:
        raise InvalidArgumentError(
            f"{path} holds records of another run (fingerprint {', '.join(f[:12] for f in foreign)}, "
            f"this run's {fingerprint[:12]}) for the detectors this run adds: other code or settings "
            "made them; move or delete the file"
        )
    return records


def fingerprints(records: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Each detector's run fingerprints (one per detector in a consistent file)."""
    found: dict[str, set[str]] = {}
    for r in records:
        found.setdefault(r["detector"], set()).add(str(r.get("fingerprint")))
    return {name: sorted(values) for name, values in found.items()}


def run_benchmark(
    entries: Sequence[ZooEntry],
    load: Callable[[ZooEntry], nn.Module],
    chosen: dict[str, Detector],
    images: Tensor,
    labels: Tensor,
    out_dir: Path,
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    fingerprint: str = "",
) -> list[dict[str, Any]]:
    """Every detector on every entry; records appended to OUT/records.jsonl, already present ones kept.

    Present records of the chosen detectors must carry ``fingerprint`` (see ``read_records``);
    new ones are tagged with it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RECORDS
    records = read_records(path, fingerprint, list(chosen))
    done = {(r["model"], r["detector"]) for r in records}
    for entry in entries:
        todo = [name for name in chosen if (entry.name, name) not in done]
        if not todo:
            continue
        model = load(entry)
        for name in todo:
            record = {**run_one(entry, model, name, chosen[name], images, labels, seed),
                      "fingerprint": fingerprint}
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            records.append(record)
            if progress is not None:
                progress(record)
    return records


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P[a positive outscores a negative], ties counting half (the Mann-Whitney statistic)."""
    if not positive or not negative:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def threshold_at(negative: Sequence[float], max_fpr: float = MAX_FPR) -> float:
    """The lowest threshold that at most ``max_fpr`` of the negatives exceed (strictly)."""
    ranked = sorted(negative, reverse=True)
    allowed = math.floor(max_fpr * len(ranked))
    return ranked[allowed] if allowed < len(ranked) else -math.inf


def _score(record: dict[str, Any]) -> float:
    """A record's score for ranking; an undefined (NaN) score ranks lowest."""
    s = float(record["score"])
    return -math.inf if math.isnan(s) else s


def metrics(records: Sequence[dict[str, Any]], detector: str, kind: str | None) -> dict[str, Any]:
    """The benchmark's figures for one detector on one trigger kind (None: all kinds)."""
    mine = [r for r in records if r["detector"] == detector and "error" not in r]
    clean = [_score(r) for r in mine if not r["trojaned"]]
    trojans = [r for r in mine if r["trojaned"] and (kind is None or r["kind"] == kind)]
    if not trojans or not clean:
        return {"detector": detector, "kind": kind or "all", "trojaned": len(trojans), "clean": len(clean)}
    cut = threshold_at(clean)
    detected = [r for r in trojans if _score(r) > cut]
    overlaps = [r["overlap"] for r in trojans if r["overlap"] is not None]
    timed = [r for r in mine if kind is None or r["kind"] in (kind, None)]
    return {
        "detector": detector,
        "kind": kind or "all",
        "trojaned": len(trojans),
        "clean": len(clean),
        "errors": sum(1 for r in records if r["detector"] == detector and "error" in r),
        "auroc": auroc([_score(r) for r in trojans], clean),
        "tpr_at_5_fpr": len(detected) / len(trojans),
        "correct_target_detected": (
            sum(bool(r["target_correct"]) for r in detected) / len(detected) if detected else None
        ),
        "correct_target_all": sum(bool(r["target_correct"]) for r in trojans) / len(trojans),
        "overlap": statistics.mean(overlaps) if overlaps else None,
        "median_seconds": statistics.median(r["seconds"] for r in timed),
        "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in timed),
    }


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(r["detector"] for r in records))
    return [metrics(records, name, kind) for kind in (None, *TRIGGER_KINDS) for name in names]


def roc_points(positive: Sequence[float], negative: Sequence[float]) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) at every threshold, from (0, 0) to (1, 1)."""
    cuts = sorted(set(positive) | set(negative), reverse=True)
    fpr, tpr = [0.0], [0.0]
    for c in cuts:
        fpr.append(sum(n >= c for n in negative) / len(negative))
        tpr.append(sum(p >= c for p in positive) / len(positive))
    return fpr, tpr


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown(summary: Sequence[dict[str, Any]], config: dict[str, Any]) -> str:
    columns = ["kind", "detector", "trojaned", "clean", "auroc", "tpr_at_5_fpr",
               "correct_target_detected", "correct_target_all", "overlap", "median_seconds",
               "median_cpu_seconds", "errors"]
    headers = ["trigger kind", "detector", "trojaned", "clean", "AUROC", "TPR at 5 % FPR",
               "correct target (detected)", "correct target (all)", "trigger overlap (IoU)",
               "s / model", "CPU s / model", "errors"]
    lines = [
        "# Trojan scan benchmark",
        "",
        f"Zoo seed {config.get('zoo_seed')}: {config.get('n_clean')} clean and "
        f"{config.get('n_trojaned')} trojaned digits models; {config.get('n_images')} held-out "
        f"clean digits with labels for every detector; detector seed {config.get('seed')}; "
        f"tg.scan budget {config.get('scan_budget'):,} model calls.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in summary]
    return "\n".join(lines) + "\n"


def plot(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """ROC curves, one panel per trigger kind plus all kinds, one curve per detector."""
    require_extra("matplotlib", "bench")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["detector"] for r in records))
    kinds: list[str | None] = [None, *TRIGGER_KINDS]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for name in names:
            mine = [r for r in records if r["detector"] == name and "error" not in r]
            clean = [_score(r) for r in mine if not r["trojaned"]]
            trojans = [_score(r) for r in mine if r["trojaned"] and (kind is None or r["kind"] == kind)]
            if clean and trojans:
                fpr, tpr = roc_points(trojans, clean)
                ax.step(fpr, tpr, where="post", label=f"{name} (AUROC {auroc(trojans, clean):.2f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
        ax.axvline(MAX_FPR, color="grey", lw=0.5)
        ax.set_title(f"{kind or 'all'} triggers")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(records: Sequence[dict[str, Any]], out_dir: Path, config: dict[str, Any]) -> dict[str, Path]:
    """scan.json (config, summary, records), scan.md (the table) and scan.png (ROC curves)."""
    summary = summarise(records)
    paths = {"json": out_dir / "scan.json", "markdown": out_dir / "scan.md", "png": out_dir / "scan.png"}
    paths["json"].write_text(json.dumps({"config": config, "summary": summary, "records": list(records)},
                                        indent=1))
    paths["markdown"].write_text(markdown(summary, config))
    plot(records, paths["png"])
    return paths


def _sha256_or_none(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def source_sha256() -> str:
    """SHA-256 of every source file of the tailguard package, by relative path: the code that ran."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fingerprint_of(config: dict[str, Any]) -> str:
    """SHA-256 of a run's config (settings, zoo manifest, source hash): records of equal runs share it."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def interleaved(entries: Sequence[ZooEntry]) -> list[ZooEntry]:
    """Clean and trojaned models alternating, so that any prefix of a run is balanced."""
    clean = [e for e in entries if not e.trojaned]
    trojaned = [e for e in entries if e.trojaned]
    out: list[ZooEntry] = []
    for i in range(max(len(clean), len(trojaned))):
        out += clean[i : i + 1] + trojaned[i : i + 1]
    return out


def run(
    out_dir: Path,
    cache_dir: Path,
    quick: bool = False,
    seed: int = 0,
    zoo_seed: int = 0,
    scan_budget: int = 360_000,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[str], None] | None = None,
    only: Sequence[str] | None = None,
) -> dict[str, Path]:
    """The benchmark (quick: 2 clean and 3 trojaned models, one per kind) into ``out_dir``.

    ``shard`` (i, n): run only every n-th model from the i-th, so n processes can
    share the zoo; each writes its records to the same file and the report covers
    every record present when it is written. ``only``: run these detectors alone
    (a later run of the others, with the same code and settings, adds theirs).
    """
    n_clean, n_trojaned = (2, 3) if quick else (30, 30)
    n_images = 200
    index, count = shard
    if not 0 <= index < count:
        raise InvalidArgumentError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    entries = build_zoo(cache_dir, n_clean=n_clean, n_trojaned=n_trojaned, seed=zoo_seed,
                        progress=progress is not None)
    images, labels = scan_inputs(n_images, seed=seed)
    chosen = detectors(scan_budget)
    if only is not None:
        unknown = sorted(set(only) - set(chosen))
        if unknown or not only:
            raise InvalidArgumentError(f"only must name some of {', '.join(chosen)}, got {list(only)}")
        chosen = {name: chosen[name] for name in only}
    config = {"zoo_seed": zoo_seed, "n_clean": n_clean, "n_trojaned": n_trojaned, "n_images": n_images,
              "seed": seed, "scan_budget": scan_budget, "quick": quick,
              "zoo_manifest_sha256": _sha256_or_none(cache_dir / "manifest.json"),
              "source_sha256": source_sha256()}
    fingerprint = fingerprint_of(config)

    def say(record: dict[str, Any]) -> None:
        if progress is not None:
            outcome = record.get("error") or f"score {record['score']:.3g}, target {record['target']}"
            progress(f"{record['model']} {record['detector']}: {outcome} ({record['seconds']:.0f} s)")

    records = run_benchmark(interleaved(entries)[index::count], lambda e: load_zoo_model(e, cache_dir),
                            chosen, images, labels, out_dir, seed=seed, progress=say,
                            fingerprint=fingerprint)
    everything = read_records(out_dir / RECORDS, fingerprint, list(chosen)) or records
    return write_report(everything, out_dir, {**config, "fingerprints": fingerprints(everything)})
