"""Model factories that case files may name, and the registry that decides which.

Configs are data: a case file's ``factory`` is looked up, never imported on its
own say-so. It may name a factory registered with ``register_model`` (the
built-ins below are ``tailguard.models:mlp``, ``:linear`` and
``:digits_classifier``), an entry point of the ``tailguard.models`` group (only
the one of that name is loaded), or a public function defined in a module the
user trusts explicitly (``--trust-module``). Anything else is refused before a
single import, so ``factory = "os:system"`` runs nothing.

Every built-in factory is deterministic: parameters are initialised from an explicit
seed, never from torch's global generator, so a config without a weights file
still describes one exact model. Models take flat vectors (n, d) or images
(n, 8, 8) alike, because each starts with ``nn.Flatten``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import InvalidArgumentError

ENTRY_POINT_GROUP = "tailguard.models"
Factory = TypeVar("Factory", bound=Callable[..., Any])
_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_model(name: str | None = None) -> Callable[[Factory], Factory]:
    """Decorator: let case files name this factory (``name``, default ``"module:function"``).

    Registration is the user's explicit statement that a config may call the
    function; nothing unregistered is ever imported or called for a config.
    A name already taken by another factory is refused rather than silently replaced.
    """
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InvalidArgumentError(
            f"register_model takes a non-empty name or nothing (use @register_model()), got {name!r}"
        )

    def decorate(factory: Factory) -> Factory:
        if not callable(factory):
            raise InvalidArgumentError(f"register_model needs a callable, got {type(factory).__name__}")
        key = name if name is not None else _qualified_name(factory)
        previous = _REGISTRY.get(key)
        if previous is not None and _qualified_name(previous) != _qualified_name(factory):
            raise InvalidArgumentError(
                f"model factory name {key!r} is already registered for {_qualified_name(previous)}"
            )
        _REGISTRY[key] = factory
        return factory

    return decorate


def registered_models() -> list[str]:
    """Every name a config may use: decorated factories and ``tailguard.models`` entry points."""
    return sorted({*_REGISTRY, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def find_factory(name: str, trust_modules: Sequence[str] = ()) -> Callable[..., Any]:
    """The factory a config names; InvalidArgumentError, having imported nothing, if not allowed.

    Looked up in order: the registry, the entry point of that name, then (for
    ``"module:function"`` with the module in ``trust_modules``) the module itself.
    """
    if isinstance(trust_modules, str) or not all(isinstance(m, str) for m in trust_modules):
        raise InvalidArgumentError(
            f"trust_modules must be a list of module names such as ['mypkg.models'], got {trust_modules!r}"
        )
    if name in _REGISTRY:
        return _REGISTRY[name]
    entry = _entry_point(name)
    if entry is not None:
        return _load_entry_point(entry)
    module, _, attr = name.partition(":")
    if module in trust_modules and attr:
        return _trusted_function(module, attr)
    raise InvalidArgumentError(_how_to_allow(name))


def _qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def _entry_point(name: str) -> EntryPoint | None:
    """The entry point called ``name`` in the group, found from package metadata without importing."""
    found = list(entry_points(group=ENTRY_POINT_GROUP, name=name))
    if len(found) > 1:
        raise InvalidArgumentError(
            f"{len(found)} installed packages declare the {ENTRY_POINT_GROUP} entry point {name!r} "
            f"({', '.join(ep.value for ep in found)}); uninstall all but one"
        )
    return found[0] if found else None


def _load_entry_point(entry: EntryPoint) -> Callable[..., Any]:
    try:
        factory = entry.load()
    except (ImportError, AttributeError) as exc:
        raise InvalidArgumentError(
            f"entry point {entry.name!r} = {entry.value!r} of {ENTRY_POINT_GROUP} cannot be loaded ({exc})"
        ) from exc
    if not callable(factory):
        raise InvalidArgumentError(f"entry point {entry.name!r} = {entry.value!r} is not callable")
    return factory  # type: ignore[no-any-return]


def _trusted_function(module_name: str, attr: str) -> Callable[..., Any]:
    """A public callable defined in the trusted module itself (not one it merely imported)."""
    name = f"{module_name}:{attr}"
    if not attr.isidentifier() or attr.startswith("_"):
        raise InvalidArgumentError(
            f"{name!r}: only a public function of the trusted module may be named, without a dotted "
            f"attribute path; register any other factory with @tailguard.register_model({name!r})"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgumentError(f"{name!r}: cannot import trusted module {module_name!r} ({exc})") from exc
    obj = getattr(module, attr, None)
    if obj is None:
        raise InvalidArgumentError(f"{name!r}: trusted module {module_name} has no {attr!r}")
    if not callable(obj):
        raise InvalidArgumentError(f"{name!r} is not callable")
    where = getattr(obj, "__module__", None)
    if where != module_name:
        raise InvalidArgumentError(
            f"{name!r}: {attr} is defined in {where}, not in the trusted module {module_name}; "
            f"name it where it is defined and trust that module, or register it"
        )
    return obj  # type: ignore[no-any-return]


def _how_to_allow(name: str) -> str:
    """Why ``name`` was refused and the three ways a user can allow it."""
    module, sep, _ = name.partition(":")
    trust = (
        f"or, if you trust the code of module {module!r}, pass --trust-module {module} "
        f"(Python: load_case(path, trust_modules=[{module!r}]))"
        if sep and module
        else "or name a function as 'package.module:function' and trust that module with --trust-module"
    )
    return (
        f"factory {name!r} is not a registered model factory, so nothing was imported or called. "
        f"Register it with @tailguard.register_model({name!r}) in code that runs before the case "
        f"is loaded, or as an entry point {name!r} in the group {ENTRY_POINT_GROUP!r} of an installed "
        f"package; {trust}. Registered: {', '.join(registered_models()) or 'none'}"
    )


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


@register_model()
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


@register_model()
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


@register_model()
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
