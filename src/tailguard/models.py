"""Built-in model factories: what configs name as ``factory = "tailguard.models:..."``.

Every factory is deterministic: parameters are initialised from an explicit
seed, never from torch's global generator, so a config without a weights file
still describes one exact model. Models take flat vectors (n, d) or images
(n, 8, 8) alike, because each starts with ``nn.Flatten``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .errors import InvalidArgumentError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    return value


def init_parameters(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every Linear layer from ``seed`` (PyTorch's default uniform ranges).

    Weights ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) roughly as nn.Linear does, biases
    alike, drawn from a private generator so the global RNG is neither read nor moved.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) * 2 * bound - bound)
                if layer.bias is not None:
                    layer.bias.copy_(torch.rand(layer.bias.shape, generator=g) * 2 * bound - bound)
    return model


def mlp(
    in_dim: int,
    hidden: int,
    out_dim: int,
    depth: int = 2,
    activation: str = "relu",
    seed: int = 0,
) -> nn.Sequential:
    """Flatten -> ``depth`` hidden layers of width ``hidden`` -> Linear(out_dim).

    Input (n, *shape) with prod(shape) = in_dim; output (n, out_dim).
    """
    for value, name in ((in_dim, "in_dim"), (hidden, "hidden"), (out_dim, "out_dim")):
        _positive_int(value, name)
    _positive_int(depth, "depth")
    if activation not in ACTIVATIONS:
        raise InvalidArgumentError(
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return init_parameters(nn.Sequential(*layers), seed)  # type: ignore[return-value]


def linear(weight: Sequence[Sequence[float]], bias: Sequence[float] | None = None) -> nn.Sequential:
    """Flatten -> a Linear layer with exactly these parameters: weight (out, in), bias (out,).

    Under a Gaussian input the output is Gaussian, so catastrophe probabilities of
    ``OutputAbove`` specs are known in closed form: the cases estimates are checked on.
    """
    w = torch.as_tensor(weight, dtype=torch.float32)
    if w.dim() != 2 or 0 in w.shape:
        raise InvalidArgumentError(f"weight must be a non-empty (out, in) matrix, got {tuple(w.shape)}")
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            b = torch.as_tensor(bias, dtype=torch.float32)
            if b.shape != (w.shape[0],):
                raise InvalidArgumentError(
                    f"bias must have {w.shape[0]} entries (one per output), got {tuple(b.shape)}"
                )
            layer.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), layer)


def digits_classifier(hidden: int = 32, epochs: int = 12, seed: int = 0) -> nn.Sequential:
    """An MLP trained on scikit-learn's 8x8 digits (all 1,797 images, pixels / 16) in seconds.

    Input (n, 8, 8) or (n, 64) in [0, 1]; output (n, 10) logits. Needs the
    ``bench`` extra (scikit-learn) for the data.
    """
    from .tasks.digits import load_digits_data, train_classifier

    data = load_digits_data(test_fraction=0.0)
    model = mlp(64, hidden, 10, depth=2, seed=seed)
    train_classifier(model, data.x_train, data.y_train, epochs=epochs, lr=1e-2, seed=seed, batch_size=128)
    return model
