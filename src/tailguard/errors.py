"""tailguard's exception types.

Every error raised for bad input is one of these, so callers can catch
``tailguard.TailguardError`` and still treat them as ordinary ``ValueError`` or
``TypeError``. Messages name the offending argument.
"""

from __future__ import annotations


class TailguardError(Exception):
    """Base class of every error tailguard raises on purpose."""


class InvalidArgumentError(TailguardError, ValueError):
    """An argument has an invalid value (negative std, unknown method, ...)."""


class ShapeMismatchError(InvalidArgumentError):
    """Shapes of the distribution, model output or spec do not fit together."""


class ModelOutputError(TailguardError, ValueError):
    """The model returned NaN/inf or an output of the wrong shape."""


class BudgetError(InvalidArgumentError):
    """The model-call budget is too small for the chosen method."""


class UnsupportedError(TailguardError, TypeError):
    """The method cannot handle this model, distribution or spec."""


class ConfigError(InvalidArgumentError):
    """A TOML configuration file is malformed or invalid."""


class WeightsError(InvalidArgumentError):
    """A weight file is missing, not safetensors, or does not fit the model."""


class MissingExtraError(TailguardError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require_extra(module: str, extra: str) -> object:
    """Import ``module`` or raise a MissingExtraError naming ``pip install tailguard[extra]``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module!r} is not installed; install it with: pip install 'tailguard[{extra}]'"
        ) from exc


class TrainingDivergedError(TailguardError, FloatingPointError):
    """A training run produced a NaN or infinite loss; the last good checkpoint is kept."""
