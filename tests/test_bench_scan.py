"""The scan benchmark's metrics, resume and report files, on synthetic records and tiny models."""

import json
import math

import pytest
import torch
from torch import nn

from tailguard.bench import scan as bench
from tailguard.bench.trojan_zoo import ZooEntry
from tailguard.errors import InvalidArgumentError
from tailguard.families.patch import PatchFamily
from tailguard.tasks.digits import Trigger


def test_auroc_counts_wins_and_half_ties():
    assert bench.auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert bench.auroc([1.0], [2.0]) == 0.0
    assert bench.auroc([2.0, 0.0], [2.0, 1.0]) == pytest.approx((0.5 + 1.0 + 0.0 + 0.0) / 4)
    assert bench.auroc([], [1.0]) is None


def test_threshold_at_lets_at_most_five_percent_of_clean_models_through():
    clean = [float(i) for i in range(40)]  # 5 % of 40 = 2 may exceed
    cut = bench.threshold_at(clean)
    assert sum(c > cut for c in clean) == 2
    assert bench.threshold_at([1.0, 2.0, 3.0]) == 3.0  # 5 % of 3 rounds down to none


def test_roc_points_run_from_origin_to_one():
    fpr, tpr = bench.roc_points([2.0, 3.0], [1.0, 2.5])
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert fpr == sorted(fpr) and tpr == sorted(tpr)


def test_overlap_is_intersection_over_union():
    a = torch.zeros(8, 8)
    a[0:2, 0:2] = 1.0
    b = torch.zeros(8, 8)
    b[1:3, 1:3] = 1.0
    assert bench.overlap(a, b) == pytest.approx(1 / 7)
    assert bench.overlap(None, b) is None
    assert bench.overlap(a, a) == 1.0


def _record(name, trojaned, kind, score, target=1, true_target=1, detector="d", overlap=0.5):
    return {"model": name, "trojaned": trojaned, "kind": kind, "score": score, "target": target,
            "true_target": true_target if trojaned else None, "detector": detector, "seconds": 2.0,
            "cpu_seconds": 1.0, "overlap": overlap if trojaned else None,
            "target_correct": (target == true_target) if trojaned else None}


def test_metrics_per_kind_on_synthetic_records():
    records = [_record(f"c{i}", False, None, float(i)) for i in range(20)]
    records += [_record("p0", True, "patch", 30.0), _record("p1", True, "patch", 18.5, target=2),
                _record("b0", True, "blend", 0.5, overlap=1.0)]
    records.append({"model": "p2", "trojaned": True, "kind": "patch", "detector": "d", "error": "boom",
                    "seconds": 1.0})
    patch = bench.metrics(records, "d", "patch")
    # clean scores 0..19: at most 1 of 20 may exceed the cut, so the cut is 18
    assert patch["tpr_at_5_fpr"] == 1.0
    assert patch["correct_target_detected"] == 0.5
    assert patch["auroc"] == pytest.approx((20 + 19) / 40)
    assert patch["errors"] == 1
    blend = bench.metrics(records, "d", "blend")
    assert blend["auroc"] == pytest.approx(1 / 20)
    assert blend["tpr_at_5_fpr"] == 0.0 and blend["correct_target_detected"] is None
    assert bench.metrics(records, "d", None)["trojaned"] == 3
    assert bench.metrics(records, "d", "warp")["trojaned"] == 0
    nan_score = [*records[:20], _record("w", True, "warp", math.nan)]
    assert bench.metrics(nan_score, "d", "warp")["auroc"] == 0.0  # an undefined score ranks lowest


def _entry(name, trojaned):
    mask = torch.zeros(8, 8)
    mask[0:3, 0:3] = 1.0
    trigger = Trigger("3x3 solid at (0,0)", torch.ones(3, 3)) if trojaned else None
    return ZooEntry(name=name, arch="mlp", width=4, seed=0, trojaned=trojaned,
                    trigger_kind="patch" if trojaned else None, target=1 if trojaned else None,
                    poison_rate=0.05 if trojaned else 0.0, trigger=trigger,
                    trigger_mask=mask if trojaned else None, clean_accuracy=0.9,
                    twin_clean_accuracy=0.9, attack_success=0.95 if trojaned else None,
                    weights_sha256="0" * 64)


def test_interleaved_alternates_clean_and_trojaned():
    entries = [_entry("c0", False), _entry("c1", False), _entry("t0", True)]
    assert [e.name for e in bench.interleaved(entries)] == ["c0", "t0", "c1"]


def test_a_run_resumes_from_its_records_and_writes_the_report(tmp_path):
    entries = [_entry("c0", False), _entry("t0", True)]
    calls = []

    def detector(model, images, labels, seed):
        calls.append(seed)
        return 1.0, 1, torch.ones(8, 8)

    def failing(model, images, labels, seed):
        raise RuntimeError("no luck")

    images, labels = torch.rand(4, 8, 8), torch.arange(4)
    chosen = {"ok": detector, "bad": failing}
    records = bench.run_benchmark(entries, lambda e: nn.Identity(), chosen, images, labels, tmp_path)
    assert len(records) == 4 and len(calls) == 2
    assert [r["error"] for r in records if r["detector"] == "bad"] == ["RuntimeError: no luck"] * 2
    trojan = next(r for r in records if r["model"] == "t0" and r["detector"] == "ok")
    assert trojan["overlap"] == pytest.approx(9 / 64) and trojan["target_correct"] is True
    again = bench.run_benchmark(entries, lambda e: nn.Identity(), chosen, images, labels, tmp_path)
    assert len(again) == 4 and len(calls) == 2  # nothing reran
    config = {"zoo_seed": 0, "n_clean": 1, "n_trojaned": 1, "n_images": 4, "seed": 0, "scan_budget": 10}
    paths = bench.write_report(again, tmp_path, config)
    assert json.loads(paths["json"].read_text())["config"] == config
    assert "| all | ok |" in paths["markdown"].read_text()
    assert paths["png"].stat().st_size > 0


def test_records_of_another_run_are_refused_not_resumed(tmp_path):
    """Records that other code or settings wrote would report detectors that no longer exist."""
    entries = [_entry("c0", False)]
    chosen = {"ok": lambda model, images, labels, seed: (1.0, 1, None)}
    images, labels = torch.rand(4, 8, 8), torch.arange(4)
    first = bench.run_benchmark(entries, lambda e: nn.Identity(), chosen, images, labels, tmp_path,
                                fingerprint="a" * 64)
    assert first[0]["fingerprint"] == "a" * 64
    with pytest.raises(InvalidArgumentError, match="another run"):
        bench.run_benchmark(entries, lambda e: nn.Identity(), chosen, images, labels, tmp_path,
                            fingerprint="b" * 64)
    # another detector from another run joins the file; each keeps its own records
    other = {"other": lambda model, images, labels, seed: (2.0, 1, None)}
    both = bench.run_benchmark(entries, lambda e: nn.Identity(), other, images, labels, tmp_path,
                               fingerprint="b" * 64)
    assert bench.fingerprints(both) == {"ok": ["a" * 64], "other": ["b" * 64]}
    config = {"zoo_seed": 0, "source_sha256": bench.source_sha256()}
    assert bench.fingerprint_of(config) == bench.fingerprint_of(dict(reversed(config.items())))
    assert bench.fingerprint_of(config) != bench.fingerprint_of({**config, "zoo_seed": 1})


def test_the_scan_s_trigger_area_is_its_patch_or_the_whole_image():
    class Witness:
        def __init__(self, family, params):
            self.attack = type("A", (), {"family": family, "params": params})()

    family = PatchFamily(torch.rand(3, 8, 8), 3, 0.03)
    report = type("R", (), {"witness": Witness(family, family.params_at(2, 4, torch.ones(3, 3)))})()
    mask = bench.scan_trigger_mask(report)
    assert mask.sum() == 9 and mask[2:5, 4:7].all()
    from tailguard.families.blend import BlendFamily

    blend = BlendFamily(torch.rand(3, 8, 8), 0.2, 0.03)
    report.witness = Witness(blend, blend.params_at(torch.ones(8, 8)))
    assert bench.scan_trigger_mask(report).sum() == 64
    from tailguard.families.masked import MaskedPatternFamily

    masked = MaskedPatternFamily(torch.rand(3, 8, 8), 4.0, 0.03)
    logits = torch.full((8, 8), -50.0)
    logits[2:4, 2:4] = 0.0
    report.witness = Witness(masked, {"mask_logits": logits, "pattern_logits": torch.zeros(8, 8)})
    area = bench.scan_trigger_mask(report)
    assert torch.allclose(area[2:4, 2:4], torch.ones(2, 2)) and float(area.sum()) == pytest.approx(4.0)
