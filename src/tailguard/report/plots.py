"""The one way tailguard draws estimates: points as points, bounds as bounds, wide intervals marked.

Every plot that shows estimates goes through ``EstimatePlot`` so that a reader
never mistakes what they see:

- an estimate with a usable interval: a filled marker with its CI as a solid bar;
- no catastrophe seen (log10 p = -inf): a downward arrow hanging from the CI's
  upper end, never a point, and never at -inf;
- an interval wider than ``WIDE_DECADES`` decades, or open at an end: a hollow
  marker and a dashed bar (an open end runs to the edge of the axes);
- nothing finite to draw (no estimate and no upper bound): counted in a note.

The legend has one entry per series (its first drawn mark) plus one entry per
kind of mark the axes shows (bound, wide), and no entry for anything not drawn.
Reference lines are always labelled. Figures are built without pyplot (no global
state) and every axes must have a title before it is turned into PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import require_extra

WIDE_DECADES = 10.0
#: colours of successive series (matplotlib's default cycle)
_COLORS = tuple(f"C{i}" for i in range(10))


def figure(nrows: int = 1, figsize: tuple[float, float] = (7.5, 4.2)) -> tuple[Any, list[Any]]:
    """(figure, list of axes) stacked vertically; needs the ``bench`` extra (matplotlib)."""
    require_extra("matplotlib", "bench")
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(nrows, 1, squeeze=False)
    return fig, list(axes[:, 0])


def png(fig: Any, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; refuses axes without a title (a plot must say what it shows)."""
    for ax in fig.axes:
        if not ax.get_title():
            raise ValueError("every plot needs a title")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(png(fig))
    return path


def _bound_marker() -> Any:
    """A bar at the bound with an arrow hanging down from it; the marker's origin is the bar."""
    from matplotlib.path import Path as MPath

    vertices = [(-0.45, 0.0), (0.45, 0.0), (0.0, 0.0), (0.0, -1.0), (-0.35, -0.6), (0.0, -1.0), (0.35, -0.6)]
    codes = [MPath.MOVETO, MPath.LINETO, MPath.MOVETO, MPath.LINETO, MPath.MOVETO, MPath.LINETO,
             MPath.LINETO]
    return MPath(vertices, codes)


class EstimatePlot:
    """One axes of log10 estimates (see the module docstring for what each mark means)."""

    def __init__(self, ax: Any, title: str, xlabel: str, ylabel: str = "log10 P(catastrophe)"):
        self.ax = ax
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        self._handles: list[tuple[Any, str]] = []
        self._kinds: set[str] = set()
        self._open: list[tuple[float, float, str, str]] = []  # (x, from y, colour, "low" | "high")
        self._undrawn = 0
        self._series = 0

    def _color(self, color: str | None) -> str:
        if color is None:
            color = _COLORS[self._series % len(_COLORS)]
        self._series += 1
        return color

    def add(self, x: Sequence[float], log10_p: Sequence[float], ci: Sequence[Sequence[float]], label: str,
            marker: str = "o", color: str | None = None) -> None:
        """One series of estimates at positions ``x`` (log10 p and (low, high) in log10)."""
        color = self._color(color)
        points: list[tuple[float, float, float, float]] = []
        bounds: list[tuple[float, float]] = []
        wide: list[tuple[float, float, float, float]] = []
        for xi, p, (low, high) in zip(x, log10_p, ci, strict=True):
            if math.isfinite(p):
                usable = math.isfinite(low) and math.isfinite(high) and high - low <= WIDE_DECADES
                (points if usable else wide).append((xi, p, low, high))
            elif math.isfinite(high):
                bounds.append((xi, high))
            else:
                self._undrawn += 1
        drawn: list[Any] = []
        if points:
            xs, ys, lows, highs = zip(*points, strict=True)
            drawn.append(self.ax.errorbar(
                # a point can lie outside its own interval (an estimate beyond a proven cap)
                xs, ys, yerr=[[max(y - lo, 0.0) for y, lo in zip(ys, lows, strict=True)],
                              [max(hi - y, 0.0) for y, hi in zip(ys, highs, strict=True)]],
                fmt=marker, color=color, ms=5, capsize=2.5, lw=1.2, alpha=0.85))
        if bounds:
            self._kinds.add("bound")
            xs, ys = zip(*bounds, strict=True)
            drawn += self.ax.plot(xs, ys, ls="none", marker=_bound_marker(), ms=16, mew=1.4, color=color,
                                  mfc="none")
        if wide:
            self._kinds.add("wide")
            for xi, p, low, high in wide:
                self.ax.vlines(xi, low if math.isfinite(low) else p, high if math.isfinite(high) else p,
                               colors=color, linestyles="--", lw=1.2)
                self._open += [(xi, p, color, end) for end, value in (("low", low), ("high", high))
                               if not math.isfinite(value)]
            drawn += self.ax.plot([w[0] for w in wide], [w[1] for w in wide], ls="none", marker=marker,
                                  ms=6, mfc="white", mec=color, mew=1.4)
        if drawn:
            self._handles.append((drawn[0], label))

    def line(self, x: Sequence[float], y: Sequence[float], label: str, **style: Any) -> None:
        """A labelled curve of values that are not estimates (a surrogate); non-finite values are left out."""
        kept = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(b)]
        if not kept:
            return
        if "color" not in style:
            style["color"] = self._color(None)
        style.setdefault("lw", 1.0)
        (handle,) = self.ax.plot([a for a, _ in kept], [b for _, b in kept], **style)
        self._handles.append((handle, label if len(kept) == len(x) else
                              f"{label} ({len(x) - len(kept)} non-finite values left out)"))

    def reference(self, y: float, label: str, ls: str = ":") -> None:
        """A labelled horizontal reference line."""
        handle = self.ax.axhline(y, color="0.35", ls=ls, lw=1.0)
        self._handles.append((handle, label))

    def finish(self, fontsize: float = 8, **legend: Any) -> None:
        """Draw open interval ends to the axes edge, note undrawn results, and add the legend."""
        from matplotlib.lines import Line2D

        low, high = self.ax.get_ylim()
        for xi, p, color, end in self._open:  # an open end runs to the edge of the axes
            self.ax.vlines(xi, p, low if end == "low" else high, colors=color, linestyles="--", lw=1.2)
        self.ax.set_ylim(low, high)
        handles = list(self._handles)
        if "bound" in self._kinds:
            proxy = Line2D([], [], ls="none", marker=_bound_marker(), ms=16, mew=1.4, color="0.3", mfc="none")
            handles.append((proxy, "upper bound only: no catastrophe seen"))
        if "wide" in self._kinds:
            proxy = Line2D([0, 0], [0, 1], ls="--", marker="o", mfc="white", color="0.3")
            handles.append((proxy, f"CI wider than {WIDE_DECADES:g} decades or open (dashed)"))
        if self._undrawn:
            self.ax.text(0.01, 0.01, f"{self._undrawn} result(s) with no finite bound, not drawn",
                         transform=self.ax.transAxes, fontsize=fontsize, va="bottom")
        if handles:
            self.ax.legend([h for h, _ in handles], [label for _, label in handles], fontsize=fontsize,
                           **legend)
