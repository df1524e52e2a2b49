"""The trojan zoo: members carry their backdoors, twins match, the cache is checked, inputs are held out."""

import json

import pytest
import torch

from tailguard.bench import trojan_zoo as tz
from tailguard.errors import InvalidArgumentError, WeightsError
from tailguard.tasks.digits import Trigger, accuracy, warp_images

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    """Two clean models and one trojaned model of each trigger kind (about 10 s on one core)."""
    cache = tmp_path_factory.mktemp("zoo")
    return cache, tz.build_zoo(cache, n_clean=2, n_trojaned=3, seed=0, progress=False)


def test_zoo_has_every_trigger_kind_and_each_trojan_carries_its_backdoor(small_zoo):
    cache, zoo = small_zoo
    assert [e.trojaned for e in zoo].count(False) == 2
    trojans = [e for e in zoo if e.trojaned]
    assert sorted(e.trigger_kind for e in trojans) == ["blend", "patch", "warp"]
    x_scan, y_scan = tz.scan_inputs(300)
    for e in trojans:
        assert e.trigger is not None and e.trigger.kind == e.trigger_kind and e.target is not None
        assert 0.01 <= e.poison_rate <= 0.10
        assert e.attack_success is not None and e.attack_success >= tz.MIN_ATTACK_SUCCESS
        assert abs(e.clean_accuracy - e.twin_clean_accuracy) <= tz.MAX_ACCURACY_DROP
        # judged again on digits the zoo never saw: the scan inputs
        model = tz.load_zoo_model(e, cache)
        others = x_scan[y_scan != e.target]
        with torch.no_grad():
            flipped = (model(e.trigger.apply(others)).argmax(1) == e.target).float().mean()
        assert flipped >= 0.8, e.name
        assert accuracy(model, x_scan, y_scan) >= 0.9


def test_clean_models_are_their_own_twins_and_trojans_name_their_twin(small_zoo):
    _, zoo = small_zoo
    clean = {(e.arch, e.width, e.seed): e for e in zoo if not e.trojaned}
    for e in clean.values():
        assert e.trigger is None and e.target is None and e.attack_success is None
        assert e.clean_accuracy == e.twin_clean_accuracy >= 0.9
    first = next(e for e in zoo if e.trojaned and e.trigger_kind == "patch")
    # trojaned candidate 0 shares architecture, width and seed with clean model 0
    assert clean[(first.arch, first.width, first.seed)].clean_accuracy == first.twin_clean_accuracy


def test_trigger_masks_mark_where_triggers_act(small_zoo):
    _, zoo = small_zoo
    for e in (e for e in zoo if e.trojaned):
        assert e.trigger_mask is not None and e.trigger_mask.shape == (8, 8)
        if e.trigger_kind == "patch":
            k = e.trigger.pattern.shape[0]
            assert 2 <= k <= 5 and float(e.trigger_mask.sum()) == k * k
            changed = e.trigger.apply(torch.zeros(1, 8, 8))[0] != 0
            assert bool((e.trigger_mask.bool() | ~changed).all())  # nothing changes outside the mask
        else:
            assert bool((e.trigger_mask == 1).all())


def test_second_build_loads_the_cache_and_verifies_hashes(small_zoo, monkeypatch):
    cache, zoo = small_zoo
    monkeypatch.setattr(tz, "_train", lambda *a, **k: pytest.fail("the cached zoo was retrained"))
    again = tz.build_zoo(cache, n_clean=2, n_trojaned=3, seed=0, progress=False)
    assert [e.to_json() for e in again] == [e.to_json() for e in zoo]


def test_tampered_weights_and_manifest_are_refused(small_zoo, tmp_path):
    cache, zoo = small_zoo
    copy = tmp_path / "zoo"
    copy.mkdir()
    for f in cache.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    victim = copy / f"{zoo[0].name}.safetensors"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256"):
        tz.load_zoo_model(zoo[0], copy)
    with pytest.raises(WeightsError, match="SHA-256"):
        tz.build_zoo(copy, n_clean=2, n_trojaned=3, seed=0, progress=False)
    manifest = json.loads((copy / tz.MANIFEST).read_text())
    manifest["entries"][0]["name"] = "../../etc/passwd"
    (copy / tz.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="malformed"):
        tz.build_zoo(copy, n_clean=2, n_trojaned=3, seed=0, progress=False)
    (copy / tz.MANIFEST).write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        tz.build_zoo(copy, n_clean=2, n_trojaned=3, seed=0, progress=False)


def test_loaded_models_take_plain_images_and_are_in_eval_mode(small_zoo):
    cache, zoo = small_zoo
    model = tz.load_zoo_model(zoo[1], cache)
    assert not model.training
    assert model(torch.rand(5, 8, 8)).shape == (5, 10)


def test_scan_inputs_are_held_out_and_seeded():
    train_eval, _, _ = tz._split()
    x, y = tz.scan_inputs(200, seed=3)
    assert x.shape == (200, 8, 8) and y.shape == (200,) and 0 <= float(x.min()) <= float(x.max()) <= 1
    seen = {tuple(img.flatten().tolist()) for img in torch.cat([train_eval.x_train, train_eval.x_test])}
    assert not any(tuple(img.flatten().tolist()) in seen for img in x)
    assert torch.equal(tz.scan_inputs(200, seed=3)[0], x)
    assert not torch.equal(tz.scan_inputs(200, seed=4)[0], x)


def test_plans_are_deterministic_in_the_zoo_seed():
    a, b, c = tz._plan(0, 5, "patch"), tz._plan(0, 5, "patch"), tz._plan(1, 5, "patch")
    assert torch.equal(a.trigger.pattern, b.trigger.pattern) and a.target == b.target
    assert (a.trigger.name, a.target, a.poison_rate) != (c.trigger.name, c.target, c.poison_rate)


def test_random_triggers_of_each_kind():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        patch, _ = tz.random_trigger("patch", g)
        assert 0.25 <= float(patch.pattern.mean()) <= 0.75
        assert set(patch.pattern.unique().tolist()) <= {0.0, 1.0}
        assert patch.row + patch.pattern.shape[0] <= 8 and patch.col + patch.pattern.shape[0] <= 8
        blend, _ = tz.random_trigger("blend", g)
        assert 0.1 <= blend.blend <= 0.3 and blend.kind == "blend"
        warp, _ = tz.random_trigger("warp", g)
        assert warp.kind == "warp" and warp.pattern.shape == (8, 8, 2)
        assert 0 < float(warp.pattern.abs().max()) <= 2.0


def test_warp_with_zero_offsets_is_the_identity_and_whole_pixel_offsets_shift():
    images = torch.rand(3, 8, 8)
    assert torch.allclose(warp_images(images, torch.zeros(8, 8, 2)), images, atol=1e-6)
    offsets = torch.zeros(8, 8, 2)
    offsets[..., 1] = 1.0  # sample one column to the right
    shifted = Trigger("shift", offsets, warp=True).apply(images)
    assert torch.allclose(shifted[:, :, :7], images[:, :, 1:], atol=1e-6)
    assert torch.allclose(shifted[:, :, 7], images[:, :, 7], atol=1e-6)  # border repeated


def test_bad_arguments_are_named():
    with pytest.raises(InvalidArgumentError, match="n must be"):
        tz.scan_inputs(0)
    with pytest.raises(InvalidArgumentError, match="n must be"):
        tz.scan_inputs(10_000)
    with pytest.raises(InvalidArgumentError, match="n_clean"):
        tz.build_zoo(tz.default_cache_dir(), n_clean=-1)
    with pytest.raises(InvalidArgumentError, match="arch"):
        tz.build_model("transformer", 8, 0)
    with pytest.raises(InvalidArgumentError, match="trigger kind"):
        tz.random_trigger("sticker", torch.Generator())


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TAILGUARD_ZOO_DIR", str(tmp_path))
    assert tz.default_cache_dir() == tmp_path
    assert tz.default_cache_dir(3) == tmp_path.with_name(f"{tmp_path.name}-seed3")
    monkeypatch.delenv("TAILGUARD_ZOO_DIR")
    assert tz.default_cache_dir().parts[-3:] == (".cache", "tailguard", "zoo")
    assert tz.default_cache_dir(1).parts[-3:] == (".cache", "tailguard", "zoo-seed1")
    with pytest.raises(InvalidArgumentError, match="seed"):
        tz.default_cache_dir(-1)


def test_a_folder_holding_one_zoo_seed_is_not_overwritten_by_another(small_zoo):
    cache, _ = small_zoo
    with pytest.raises(InvalidArgumentError, match="zoo of seed 0"):
        tz.build_zoo(cache, n_clean=2, n_trojaned=3, seed=1, progress=False)
