"""Latent adversarial training: perturb hidden activations, not inputs, and train under them.

Casper et al. (2024), "Defending Against Unforeseen Failure Modes with Latent
Adversarial Training", argue that failures the input-space adversary cannot
reach (unseen triggers) are still nearby in activation space, so robustness to
L2-bounded perturbations of a hidden layer generalises past the attacks one
thought of. Sheshadri et al. (2024), "Latent Adversarial Training Improves
Robustness to Persistent Harmful Behaviors in LLMs", make the perturbation
targeted: it pushes towards the harmful behaviour (here: the catastrophe) rather
than merely raising the loss. Both variants are here: for rows whose true
answer is safe, the targeted adversary ascends the spec's smooth catastrophe
surrogate; otherwise (and when untargeted) it ascends the cross-entropy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError
from ..oracle import eval_mode
from ..specs import Spec
from .policy import Batch, safe_rows

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Softplus)


def default_layer(model: nn.Sequential) -> int:
    """Index of the first hidden activation module: where the first learned features live."""
    for i, module in enumerate(model):
        if isinstance(module, ACTIVATIONS):
            return i
    raise InvalidArgumentError(
        "lat found no activation module in the model; pass layer=<index> to choose where to perturb"
    )


def check_layer(model: nn.Module, layer: int | None) -> int:
    """The validated index of the module after which activations are perturbed."""
    if not isinstance(model, nn.Sequential):
        raise InvalidArgumentError(
            f"lat perturbs a layer of an nn.Sequential; the model is a {type(model).__name__}"
        )
    if layer is None:
        return default_layer(model)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(model) - 1:
        raise InvalidArgumentError(
            f"layer must be an int in [0, {len(model) - 2}] (a module before the last), got {layer!r}"
        )
    return layer


@contextmanager
def latent_perturbation(model: nn.Sequential, layer: int, delta: Tensor) -> Iterator[None]:
    """Within the block, model[layer]'s output (b, ...) has ``delta`` (b, ...) added to it."""
    handle = model[layer].register_forward_hook(lambda _module, _inputs, out: out + delta)
    try:
        yield
    finally:
        handle.remove()


def _row_norms(t: Tensor) -> Tensor:
    """L2 norm of each row of t (b, ...), shaped (b, 1, ...) to broadcast against t."""
    norms = t.flatten(1).norm(dim=1).clamp_min(1e-12)
    return norms.view(-1, *([1] * (t.dim() - 1)))


def project_l2(delta: Tensor, radius: float) -> Tensor:
    """Rows of delta (b, ...) scaled into the L2 ball of ``radius``."""
    return delta * (radius / _row_norms(delta)).clamp(max=1.0)


class LatentPGD:
    """L2 PGD on the activations after ``model[layer]``, then cross-entropy under the worst delta.

    The radius is ``epsilon`` times the batch's mean clean activation norm, so
    one setting suits layers of very different widths (an MLP's 128 units, a
    CNN's 16 x 8 x 8 feature maps).
    """

    def __init__(
        self, model: nn.Sequential, spec: Spec, layer: int, epsilon: float, steps: int, targeted: bool
    ):
        self.model, self.spec, self.layer = model, spec, layer
        self.epsilon, self.steps, self.targeted = epsilon, steps, targeted
        self.model_calls = 0

    def _objective(self, x: Tensor, y: Tensor, safe: Tensor, delta: Tensor) -> Tensor:
        """What the adversary ascends, summed over the batch."""
        with latent_perturbation(self.model, self.layer, delta):
            out = self.model(x)
        self.model_calls += x.shape[0]
        ce = nn.functional.cross_entropy(out, y, reduction="none")
        if not self.targeted:
            return ce.sum()
        return torch.where(safe, self.spec.soft(x, out), ce).sum()

    def worst_delta(self, x: Tensor, y: Tensor, safe: Tensor) -> tuple[Tensor, float]:
        """(delta of the activations' shape (b, ...), its radius) after ``steps`` L2 ascent steps."""
        with eval_mode(self.model):
            with torch.no_grad():
                clean = self.model[: self.layer + 1](x)
            radius = self.epsilon * float(clean.flatten(1).norm(dim=1).mean())
            step = 2.5 * radius / self.steps
            delta = torch.zeros_like(clean)
            for _ in range(self.steps):
                delta.requires_grad_(True)
                (grad,) = torch.autograd.grad(self._objective(x, y, safe, delta), delta)
                unit = grad / _row_norms(grad)
                delta = project_l2(delta.detach() + step * unit, radius)
        return delta.detach(), radius

    def loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor | None, dict[str, float]]:
        """Cross-entropy of the true labels with the worst latent perturbation in place."""
        x, y = batch
        safe = safe_rows(self.model, self.spec, x, y)
        delta, radius = self.worst_delta(x, y, safe)
        with latent_perturbation(self.model, self.layer, delta):
            out = self.model(x)
        loss = nn.functional.cross_entropy(out, y)
        caught = self.spec.score(x, out.detach()) > 0
        return loss, {
            "adversarial_loss": float(loss.detach()),
            "adversary_success": float(caught[safe].float().mean()) if bool(safe.any()) else 0.0,
            "latent_radius": radius,
        }
