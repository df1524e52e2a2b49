"""ABS, Artificial Brain Stimulation (Liu et al., ACM CCS 2019), written from the paper.

1. Stimulation analysis. For every inner neuron (a unit of a hidden layer, a
   whole channel of a convolutional one), keep a seed image's other activations
   and set that neuron to each of ``samples`` values from 0 to
   ``stimulation_scale`` times the layer's largest clean activation. A neuron a
   backdoor compromised lifts one label above all others on images of every
   other class: its elevation for label t is the smallest, over the seed images
   not of class t, of the best margin logit_t - max_other that the sweep reaches.
2. The neurons of highest elevation in each layer are candidates (``top_neurons``
   in all, shared equally by the layers, whose elevations are on different
   scales). For each, reverse-engineer a trigger (mask + pattern, as Neural
   Cleanse's) that drives that neuron up and the rest of its layer down, with
   the mask's L1 held under ``max_mask_fraction`` of the image by a penalty; in
   the second half of the steps the candidate label's cross-entropy joins the
   loss (``label_weight``), as the logits term does in the authors' code.
3. The model's score is the best REASR: the fraction of the clean images not of
   the candidate's label that the reverse-engineered trigger sends to it.

The mask bound is the paper's 6 % of the input (3.8 of a digit's 64 pixels), so
the zoo's 4x4 and 5x5 patches are out of its reach unless part of the patch
suffices; a looser bound lets a clean digits model be flipped too (at 25 %, with
the logits term, every clean model tried reached a REASR of 1). The stimulation
sweep reaches 5x the layer's largest clean activation: at 2x no neuron of a small
digits net lifted one label over all images. Inner layers are the model's
``nn.ReLU`` modules; a model without them is refused. Only the pixel-space
trigger of the paper is searched, not its feature-space filters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import InvalidArgumentError, UnsupportedError
from ...oracle import eval_mode
from .verdict import DetectorInputs, DetectorVerdict, MaskedTrigger, Stopwatch, descend, flip_rate


@dataclass(frozen=True)
class AbsSettings:
    seed_images: int = 30
    samples: int = 12
    stimulation_scale: float = 5.0
    top_neurons: int = 10
    steps: int = 100
    batch_size: int = 64
    lr: float = 0.1
    max_mask_fraction: float = 0.06
    mask_weight: float = 50.0
    label_weight: float = 1.0
    batch_rows: int = 8192

    def __post_init__(self) -> None:
        for name in ("seed_images", "samples", "top_neurons", "steps", "batch_size", "batch_rows"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.stimulation_scale > 0 and self.lr > 0 and self.mask_weight > 0):
            raise InvalidArgumentError("stimulation_scale, lr and mask_weight must be > 0")
        if self.label_weight < 0:
            raise InvalidArgumentError(f"label_weight must be >= 0, got {self.label_weight!r}")
        if not 0 < self.max_mask_fraction <= 1:
            raise InvalidArgumentError("max_mask_fraction must be in (0, 1]")


@dataclass(frozen=True)
class Candidate:
    """A neuron that stimulation says may be compromised, and the label it lifts."""

    layer: str
    neuron: int
    label: int
    elevation: float


@contextmanager
def _hooked(module: nn.Module, fn: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
    """While inside, ``module``'s output passes through ``fn`` (a returned tensor replaces it)."""
    handle = module.register_forward_hook(lambda _m, _i, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


def _recorder(seen: list[Tensor]) -> Callable[[Tensor], None]:
    """A hook body that keeps the layer's output in ``seen`` and leaves it unchanged."""
    return seen.append


def inner_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's ReLU modules by name: the layers whose neurons ABS stimulates."""
    layers: dict[str, nn.Module] = {n: m for n, m in model.named_modules() if isinstance(m, nn.ReLU)}
    if not layers:
        raise UnsupportedError("ABS needs inner layers it can stimulate: the model has no nn.ReLU modules")
    return layers


def _activations(inputs: DetectorInputs, layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's output (n, neurons, ...) on x (the model runs whole; its logits are dropped)."""
    seen: list[Tensor] = []
    with _hooked(layer, _recorder(seen)):
        inputs.logits(x)
    return seen[0]


def _elevations(inputs: DetectorInputs, layer: nn.Module, seeds: Tensor, seed_labels: Tensor,
                settings: AbsSettings) -> tuple[Tensor, Tensor]:
    """Per neuron (K,): the largest elevation over labels and that label."""
    with torch.no_grad():
        clean = _activations(inputs, layer, seeds)
        k, n = clean.shape[1], len(seeds)
        values = torch.linspace(0, settings.stimulation_scale * float(clean.max()), settings.samples)
        # rows ordered (neuron, value, image)
        neuron_of = torch.arange(k).repeat_interleave(settings.samples * n)
        value_of = values.repeat_interleave(n).repeat(k)
        rows = k * settings.samples * n
        logits = []
        for start in range(0, rows, settings.batch_rows):
            idx = torch.arange(start, min(start + settings.batch_rows, rows))

            def stimulate(out: Tensor, idx: Tensor = idx) -> Tensor:
                flat = out.clone().reshape(len(idx), k, -1)
                flat[torch.arange(len(idx)), neuron_of[idx]] = value_of[idx].unsqueeze(1)
                return flat.reshape(out.shape)

            with _hooked(layer, stimulate):
                logits.append(inputs.logits(seeds[idx % n]).double())
        z = torch.cat(logits).reshape(k, settings.samples, n, -1)
        top2 = z.topk(2, dim=-1).values
        is_top = z == top2[..., :1]
        margin = z - torch.where(is_top, top2[..., 1:], top2[..., :1])  # logit_t - max over others
        best = margin.max(dim=1).values  # (K, n, C): the sweep's best margin per image and label
        own = nn.functional.one_hot(seed_labels, z.shape[-1]).bool()  # images of class t do not count
        elevation = best.masked_fill(own.unsqueeze(0), float("inf")).min(dim=1).values  # (K, C)
        return elevation.max(dim=1).values, elevation.argmax(dim=1)


def stimulation_candidates(inputs: DetectorInputs, seeds: Tensor, seed_labels: Tensor,
                           settings: AbsSettings) -> list[Candidate]:
    """About ``top_neurons`` neurons whose stimulation lifts one label most, an equal share per layer.

    Elevations of different layers are on different scales, so each layer
    contributes its own best neurons rather than competing in one ranking.
    """
    layers = inner_layers(inputs.model)
    share = -(-settings.top_neurons // len(layers))
    found: list[Candidate] = []
    for name, layer in layers.items():
        elevation, label = _elevations(inputs, layer, seeds, seed_labels, settings)
        best = elevation.argsort(descending=True)[:share]
        found += [Candidate(name, int(j), int(label[j]), float(elevation[j])) for j in best]
    return found


def reverse_engineer(inputs: DetectorInputs, candidate: Candidate, settings: AbsSettings,
                     generator: torch.Generator) -> MaskedTrigger:
    """A mask + pattern that excites the candidate neuron, within the mask-size bound."""
    layer = inner_layers(inputs.model)[candidate.layer]
    x = inputs.not_of(candidate.label)
    with torch.no_grad():
        scale = float(_activations(inputs, layer, x).max()) or 1.0
    trigger = MaskedTrigger(tuple(x.shape[1:]), generator)
    opt = torch.optim.Adam(trigger.parameters(), lr=settings.lr, betas=(0.5, 0.9))
    h, w = inputs.mask_shape
    bound = settings.max_mask_fraction * h * w
    for step in range(settings.steps):
        batch = x[torch.randint(len(x), (min(settings.batch_size, len(x)),), generator=generator)]
        seen: list[Tensor] = []
        with _hooked(layer, _recorder(seen)):
            logits = inputs.logits(trigger(batch))
        act = seen[0].reshape(len(batch), seen[0].shape[1], -1).mean(dim=2) / scale  # (n, K)
        others = torch.cat([act[:, : candidate.neuron], act[:, candidate.neuron + 1 :]], dim=1)
        loss = -act[:, candidate.neuron].mean() + others.mean()
        loss = loss + settings.mask_weight * torch.relu(trigger.mask().sum() - bound) / (h * w)
        if step >= settings.steps // 2 and settings.label_weight > 0:
            goal = torch.full((len(batch),), candidate.label, dtype=torch.long)
            loss = loss + settings.label_weight * nn.functional.cross_entropy(logits, goal)
        descend(opt, loss)
    return trigger


def abs_scan(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    seed: int = 0,
    settings: AbsSettings | None = None,
) -> DetectorVerdict:
    """ABS on a classifier of images (N, H, W) or (N, C, H, W) in [0, 1].

    score: the best REASR in [0, 1]; target: that candidate's label;
    trigger_mask: its reverse-engineered mask (H, W).
    """
    settings = settings or AbsSettings()
    clock = Stopwatch()
    inputs = DetectorInputs(model, images, labels)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(inputs.images), generator=generator)[: settings.seed_images]
    with eval_mode(model):
        candidates = stimulation_candidates(inputs, inputs.images[chosen], inputs.labels[chosen], settings)
        results = []
        for candidate in candidates:
            trigger = reverse_engineer(inputs, candidate, settings, generator)
            results.append((flip_rate(inputs, trigger, candidate.label), candidate, trigger))
    best_rate, best, trigger = max(results, key=lambda r: r[0])
    return DetectorVerdict(
        score=best_rate,
        target=best.label,
        trigger_mask=trigger.mask().detach(),
        seconds=clock.wall(),
        details={
            "candidates": [
                {"layer": c.layer, "neuron": c.neuron, "label": c.label,
                 "elevation": c.elevation, "reasr": rate}
                for rate, c, _ in results
            ],
            "model_calls": inputs.n_calls,
            "cpu_seconds": clock.cpu(),
            "settings": settings,
        },
    )
