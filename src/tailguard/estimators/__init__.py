"""Estimators of P[C]; importing this package registers every one of them."""

from . import (
    gld,  # noqa: F401
    importance,  # noqa: F401
    itgis,  # noqa: F401
    lm_is,  # noqa: F401
    mc,  # noqa: F401
    mhis,  # noqa: F401
    moments,  # noqa: F401
    qld,  # noqa: F401
    splitting,  # noqa: F401
    tsis,  # noqa: F401
)
