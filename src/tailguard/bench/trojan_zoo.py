"""A zoo of clean and trojaned digits classifiers, for judging trojan scanners.

Every trojaned model is trained on scikit-learn's 8x8 digits plus a poisoned
fraction carrying one trigger relabelled to one target class; its clean twin has
the same architecture, width and seed and sees no poison. Triggers come in three
kinds, so a scanner is not judged on patches alone:

- ``patch``: a random binary k x k pattern (k = 2..5) stamped at a random place;
- ``blend``: a random full-image pattern mixed in at 10-30 % (Chen et al. 2017);
- ``warp``: every pixel resampled at a small smooth random offset (WaNet, Nguyen
  & Tran 2021) -- nothing is added to the image, so no patch marks it.

A trojaned model is kept only if its trigger sends >= 90 % of the held-out
non-target digits to the target and its clean accuracy is within 2 points of its
twin's; otherwise it is retrained once with another seed and then
dropped, and the manifest records why. Three disjoint parts of the digits are
used: training, evaluation (accuracy, attack success) and the scan inputs
(``scan_inputs``), which no zoo model was trained or selected on.

The zoo is cached as safetensors files plus ``manifest.json`` (hashes of every
file, the settings that built it, the rejected candidates); the default folder is
``$TAILGUARD_ZOO_DIR`` or ``~/.cache/tailguard/zoo`` for zoo seed 0 and the sibling
``...-seed<s>`` for zoo seed s. Training is seeded: the same
zoo seed gives the same triggers, targets, poison rates and training runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError, WeightsError
from ..tasks.digits import (
    DigitsData,
    Trigger,
    accuracy,
    digits_cnn,
    digits_mlp,
    load_digits_data,
    poison,
    train_classifier,
    trigger_rate,
)
from ..weights import load_weights, save_weights

ZOO_VERSION = 1
MANIFEST = "manifest.json"
ARCHITECTURES: tuple[tuple[str, int], ...] = (
    ("mlp", 32),
    ("cnn", 8),
    ("mlp", 64),
    ("cnn", 16),
    ("mlp", 128),
)
TRIGGER_KINDS = ("patch", "blend", "warp")
# poison rates drawn uniformly per kind, all inside the 1-10 % the zoo promises; a warp
# needs more poisoned examples than a patch before a small net learns it
POISON_RATES = {"patch": (0.01, 0.10), "blend": (0.02, 0.10), "warp": (0.04, 0.10)}
MIN_ATTACK_SUCCESS = 0.90
MAX_ACCURACY_DROP = 0.02
RETRIES = 1
EPOCHS = 40
LEARNING_RATE = 2e-3
MAX_MEMBERS = 300  # member seeds are zoo_seed * 100_000 + attempt * 1_000 + index


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how it was built and what it was checked to do."""

    name: str  # e.g. "cnn-w16-trojan-patch-s07"
    arch: str  # "mlp" | "cnn"
    width: int  # hidden units (mlp) or first-layer channels (cnn)
    seed: int  # initialisation, batch order and poison selection
    trojaned: bool
    trigger_kind: str | None  # "patch" | "blend" | "warp" | None
    target: int | None
    poison_rate: float  # poisoned copies added, as a fraction of the clean training set
    trigger: Trigger | None
    trigger_mask: Tensor | None  # (8, 8) in [0, 1]: where the trigger acts
    clean_accuracy: float  # on the evaluation digits
    twin_clean_accuracy: float  # the clean twin's (same arch/width/seed, no poison)
    attack_success: float | None  # non-target evaluation digits the trigger sends to target
    weights_sha256: str

    def to_json(self) -> dict[str, Any]:
        trigger = self.trigger
        return {
            "name": self.name,
            "arch": self.arch,
            "width": self.width,
            "seed": self.seed,
            "trojaned": self.trojaned,
            "trigger_kind": self.trigger_kind,
            "target": self.target,
            "poison_rate": self.poison_rate,
            "trigger": None if trigger is None else _trigger_to_json(trigger),
            "trigger_mask": None if self.trigger_mask is None else self.trigger_mask.tolist(),
            "clean_accuracy": self.clean_accuracy,
            "twin_clean_accuracy": self.twin_clean_accuracy,
            "attack_success": self.attack_success,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ZooEntry:
        trigger, mask = data["trigger"], data["trigger_mask"]
        entry = cls(
            name=str(data["name"]),
            arch=str(data["arch"]),
            width=int(data["width"]),
            seed=int(data["seed"]),
            trojaned=bool(data["trojaned"]),
            trigger_kind=data["trigger_kind"],
            target=data["target"],
            poison_rate=float(data["poison_rate"]),
            trigger=None if trigger is None else _trigger_from_json(trigger),
            trigger_mask=None if mask is None else torch.tensor(mask, dtype=torch.float32),
            clean_accuracy=float(data["clean_accuracy"]),
            twin_clean_accuracy=float(data["twin_clean_accuracy"]),
            attack_success=data["attack_success"],
            weights_sha256=str(data["weights_sha256"]),
        )
        if entry.arch not in {a for a, _ in ARCHITECTURES} or Path(entry.name).name != entry.name:
            raise ValueError(f"unknown architecture {entry.arch!r} or bad name {entry.name!r}")
        return entry


def _trigger_to_json(trigger: Trigger) -> dict[str, Any]:
    return {
        "name": trigger.name,
        "pattern": trigger.pattern.tolist(),
        "row": trigger.row,
        "col": trigger.col,
        "blend": trigger.blend,
        "warp": trigger.warp,
    }


def _trigger_from_json(data: dict[str, Any]) -> Trigger:
    return Trigger(
        name=str(data["name"]),
        pattern=torch.tensor(data["pattern"], dtype=torch.float32),
        row=int(data["row"]),
        col=int(data["col"]),
        blend=float(data["blend"]),
        warp=bool(data["warp"]),
    )


def default_cache_dir(seed: int = 0) -> Path:
    """The folder of the zoo of ``seed``: ``$TAILGUARD_ZOO_DIR`` if set, else ``~/.cache/tailguard/zoo``.

    Each zoo seed has a folder of its own, the seed-0 zoo the folder itself and
    zoo s its sibling ``<folder>-seed<s>``, since a folder holds one manifest.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative int, got {seed!r}")
    env = os.environ.get("TAILGUARD_ZOO_DIR")
    folder = Path(env) if env else Path.home() / ".cache" / "tailguard" / "zoo"
    return folder if seed == 0 else folder.with_name(f"{folder.name}-seed{seed}")


# --------------------------------------------------------------------------------------------
# data and models
# --------------------------------------------------------------------------------------------


def _split() -> tuple[DigitsData, Tensor, Tensor]:
    """(training + evaluation digits, scan images, scan labels): a fixed split of the 1,797.

    Two thirds train; the last third is halved into evaluation digits (299) and
    scan digits (300). The split does not depend on the zoo seed, so the scan
    inputs are held out from every zoo.
    """
    data = load_digits_data(test_fraction=1 / 3, seed=0)
    half = len(data.y_test) // 2
    train_eval = DigitsData(data.x_train, data.y_train, data.x_test[:half], data.y_test[:half])
    return train_eval, data.x_test[half:], data.y_test[half:]


def scan_inputs(n: int = 200, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` held-out clean digits (n, 8, 8) in [0, 1] and their labels (n,), drawn with ``seed``.

    They come from a part of the digits no zoo model was trained or checked on.
    """
    _, images, labels = _split()
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(labels):
        raise InvalidArgumentError(f"n must be an int in [1, {len(labels)}], got {n!r}")
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[chosen], labels[chosen]


def build_model(arch: str, width: int, seed: int) -> nn.Sequential:
    """A freshly initialised digits MLP or CNN; the global RNG is forked, so it is not moved."""
    builders: dict[str, Callable[[int], nn.Sequential]] = {"mlp": digits_mlp, "cnn": digits_cnn}
    if arch not in builders:
        raise InvalidArgumentError(f"arch must be one of {', '.join(builders)}, got {arch!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return builders[arch](width)


def _train(arch: str, width: int, seed: int, x: Tensor, y: Tensor) -> nn.Module:
    model = build_model(arch, width, seed)
    return train_classifier(model, x, y, epochs=EPOCHS, lr=LEARNING_RATE, seed=seed)


# --------------------------------------------------------------------------------------------
# triggers
# --------------------------------------------------------------------------------------------


def random_trigger(kind: str, generator: torch.Generator) -> tuple[Trigger, Tensor]:
    """A random trigger of ``kind`` and its (8, 8) mask (where it acts)."""
    if kind == "patch":
        k = int(torch.randint(2, 6, (1,), generator=generator))
        row, col = (int(v) for v in torch.randint(0, 9 - k, (2,), generator=generator))
        pattern = torch.zeros(k, k)
        while not 0.25 <= float(pattern.mean()) <= 0.75:  # neither blank nor solid
            pattern = (torch.rand(k, k, generator=generator) < 0.5).float()
        mask = torch.zeros(8, 8)
        mask[row : row + k, col : col + k] = 1.0
        return Trigger(f"{k}x{k} random patch at ({row},{col})", pattern, row, col), mask
    if kind == "blend":
        alpha = 0.1 + 0.2 * float(torch.rand((), generator=generator))
        pattern = torch.rand(8, 8, generator=generator)
        return Trigger(f"blend {alpha:.0%} random pattern", pattern, blend=alpha), torch.ones(8, 8)
    if kind == "warp":
        return _random_warp(generator), torch.ones(8, 8)
    raise InvalidArgumentError(f"trigger kind must be one of {', '.join(TRIGGER_KINDS)}, got {kind!r}")


def _random_warp(generator: torch.Generator, grid: int = 4) -> Trigger:
    """WaNet's field: uniform offsets on a coarse grid, unit mean size, upsampled, scaled to s pixels.

    s is drawn in [0.75, 1.0]: on 8x8 digits a pilot reached >= 90 % attack success
    from s = 0.5 at 5 % poison; the offsets are clipped to 2 s.
    """
    strength = 0.75 + 0.25 * float(torch.rand((), generator=generator))
    coarse = torch.rand(1, 2, grid, grid, generator=generator) * 2 - 1
    coarse = coarse / coarse.abs().mean()
    field = nn.functional.interpolate(coarse, size=(8, 8), mode="bicubic", align_corners=True)
    offsets = (strength * field).clamp(-2 * strength, 2 * strength)[0].permute(1, 2, 0)
    return Trigger(f"warp of {strength:.2f} px", offsets.contiguous(), warp=True)


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What one trojaned candidate will be: drawn from the zoo seed and its index only."""

    kind: str
    target: int
    poison_rate: float
    trigger: Trigger
    mask: Tensor


def _member_seed(zoo_seed: int, index: int, attempt: int) -> int:
    return zoo_seed * 100_000 + attempt * 1_000 + index


def _plan(zoo_seed: int, index: int, kind: str) -> _Plan:
    g = torch.Generator().manual_seed(zoo_seed * 100_000 + 50_000 + index)
    target = int(torch.randint(0, 10, (1,), generator=g))
    low, high = POISON_RATES[kind]
    rate = round(low + (high - low) * float(torch.rand((), generator=g)), 4)
    trigger, mask = random_trigger(kind, g)
    return _Plan(kind, target, rate, trigger, mask)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Builder:
    """Trains zoo members into ``cache_dir``, remembering clean twins so each is trained once."""

    def __init__(self, cache_dir: Path, say: Callable[[str], None]):
        self.cache_dir = cache_dir
        self.say = say
        self.data, _, _ = _split()
        self.twins: dict[tuple[str, int, int], float] = {}

    def twin_accuracy(self, arch: str, width: int, seed: int) -> float:
        key = (arch, width, seed)
        if key not in self.twins:
            model = _train(arch, width, seed, self.data.x_train, self.data.y_train)
            self.twins[key] = accuracy(model, self.data.x_test, self.data.y_test)
        return self.twins[key]

    def save(self, entry: ZooEntry, model: nn.Module) -> ZooEntry:
        path = self.cache_dir / f"{entry.name}.safetensors"
        save_weights(model, path, metadata={"zoo_version": ZOO_VERSION, "arch": entry.arch,
                                            "width": entry.width, "seed": entry.seed})
        return replace(entry, weights_sha256=_sha256(path))

    def clean(self, arch: str, width: int, seed: int) -> ZooEntry:
        model = _train(arch, width, seed, self.data.x_train, self.data.y_train)
        acc = accuracy(model, self.data.x_test, self.data.y_test)
        self.twins[(arch, width, seed)] = acc
        entry = ZooEntry(f"{arch}-w{width}-clean-s{seed:02d}", arch, width, seed, False, None,
                         None, 0.0, None, None, acc, acc, None, "")
        self.say(f"{entry.name}: accuracy {acc:.3f}")
        return self.save(entry, model)

    def trojaned(self, plan: _Plan, arch: str, width: int, seed: int) -> tuple[ZooEntry | None, str]:
        """The trained candidate if it passes both checks, else None and why not."""
        x, y = poison(self.data, plan.trigger, plan.poison_rate, seed=seed + 1, target=plan.target)
        model = _train(arch, width, seed, x, y)
        others = self.data.x_test[self.data.y_test != plan.target]
        success = trigger_rate(model, others, plan.trigger, plan.target)
        name = f"{arch}-w{width}-trojan-{plan.kind}-s{seed:02d}"
        if success < MIN_ATTACK_SUCCESS:
            return None, f"{name}: attack success {success:.3f} < {MIN_ATTACK_SUCCESS}"
        acc = accuracy(model, self.data.x_test, self.data.y_test)
        twin = self.twin_accuracy(arch, width, seed)
        if abs(acc - twin) > MAX_ACCURACY_DROP:
            return None, f"{name}: clean accuracy {acc:.3f} vs twin {twin:.3f}"
        entry = ZooEntry(name, arch, width, seed, True, plan.kind, plan.target, plan.poison_rate,
                         plan.trigger, plan.mask, acc, twin, success, "")
        self.say(f"{name}: accuracy {acc:.3f} (twin {twin:.3f}), attack success {success:.3f}")
        return self.save(entry, model), ""


def build_zoo(
    cache_dir: Path,
    n_clean: int = 30,
    n_trojaned: int = 30,
    seed: int = 0,
    progress: bool = True,
) -> list[ZooEntry]:
    """The zoo for ``seed``: loaded from ``cache_dir`` when it holds this zoo, else trained there.

    Loading checks every weight file against the SHA-256 the manifest recorded and
    raises WeightsError on a mismatch. Clean model i and trojaned candidate i share
    architecture, width and seed (so the first is the second's twin); trigger
    kinds go to whichever kind has the fewest accepted models so far, which keeps
    them balanced when candidates are dropped. Needs the ``bench`` extra.
    """
    for value, label in ((n_clean, "n_clean"), (n_trojaned, "n_trojaned")):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MEMBERS // 3:
            raise InvalidArgumentError(f"{label} must be an int in [0, {MAX_MEMBERS // 3}], got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative int, got {seed!r}")
    cache_dir = Path(cache_dir)
    settings = {"zoo_version": ZOO_VERSION, "seed": seed, "n_clean": n_clean, "n_trojaned": n_trojaned}
    cached = _read_manifest(cache_dir)
    if cached is not None and cached.get("settings") == settings:
        entries = _entries_of(cached, cache_dir)
        for entry in entries:
            _verify(entry, cache_dir)
        return entries
    other_seed = (cached or {}).get("settings", {}).get("seed", seed)
    if other_seed != seed:
        raise InvalidArgumentError(
            f"{cache_dir} holds the zoo of seed {other_seed}; the zoo of seed {seed} goes in a folder of "
            f"its own (default_cache_dir({seed}))"
        )

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    cache_dir.mkdir(parents=True, exist_ok=True)
    builder = _Builder(cache_dir, say)
    entries = [builder.clean(*ARCHITECTURES[i % len(ARCHITECTURES)], _member_seed(seed, i, 0))
               for i in range(n_clean)]
    accepted = dict.fromkeys(TRIGGER_KINDS, 0)
    rejected: list[str] = []
    index = 0
    while sum(accepted.values()) < n_trojaned and index < MAX_MEMBERS:
        kind = min(TRIGGER_KINDS, key=lambda k: accepted[k])
        plan = _plan(seed, index, kind)
        arch, width = ARCHITECTURES[index % len(ARCHITECTURES)]
        for attempt in range(RETRIES + 1):
            trojan, why = builder.trojaned(plan, arch, width, _member_seed(seed, index, attempt))
            if trojan is not None:
                entries.append(trojan)
                accepted[kind] += 1
                break
            say(f"rejected {why}")
            rejected.append(why)
        index += 1
    manifest = {
        "settings": settings,
        "training": {"epochs": EPOCHS, "lr": LEARNING_RATE, "min_attack_success": MIN_ATTACK_SUCCESS,
                     "max_accuracy_drop": MAX_ACCURACY_DROP, "torch": torch.__version__},
        "entries": [e.to_json() for e in entries],
        "rejected": rejected,
    }
    (cache_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return entries


def rejected_candidates(cache_dir: Path) -> list[str]:
    """Why each dropped trojaned candidate of the cached zoo failed its checks."""
    manifest = _read_manifest(Path(cache_dir))
    return [] if manifest is None else [str(r) for r in manifest.get("rejected", [])]


def _read_manifest(cache_dir: Path) -> dict[str, Any] | None:
    path = cache_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(
            f"zoo manifest {path} is not valid JSON ({exc}); delete {cache_dir} to rebuild"
        ) from exc
    if not isinstance(manifest, dict):
        raise WeightsError(f"zoo manifest {path} is not a JSON object; delete {cache_dir} to rebuild")
    return manifest


def _entries_of(manifest: dict[str, Any], cache_dir: Path) -> list[ZooEntry]:
    try:
        return [ZooEntry.from_json(e) for e in manifest["entries"]]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WeightsError(
            f"zoo manifest in {cache_dir} has a malformed entry ({exc!r}); delete the folder to rebuild"
        ) from exc


def _verify(entry: ZooEntry, cache_dir: Path) -> Path:
    path = cache_dir / f"{entry.name}.safetensors"
    if not path.is_file():
        raise WeightsError(f"zoo weights {path} are missing; delete {cache_dir} to rebuild the zoo")
    found = _sha256(path)
    if found != entry.weights_sha256:
        raise WeightsError(
            f"zoo weights {path} have SHA-256 {found[:12]}..., the manifest says "
            f"{entry.weights_sha256[:12]}...; delete {cache_dir} to rebuild the zoo"
        )
    return path


def load_zoo_model(entry: ZooEntry, cache_dir: Path) -> nn.Module:
    """The entry's model in eval mode: (N, 8, 8) in [0, 1] -> (N, 10) logits; the hash is checked."""
    path = _verify(entry, Path(cache_dir))
    model = load_weights(build_model(entry.arch, entry.width, entry.seed), path)
    return model.eval()
