"""What a report page holds, independent of how it is written: blocks of text, tables, figures.

A page builder (one per kind of run) reads a run's JSON header and JSONL log and
returns a ``Page``; ``report.html`` writes it. Reports that already have a
markdown form (the benchmark tables) give their tables through
``markdown_blocks``, so a table is written once and shown the same in both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .rows import Row


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str
    preformatted: bool = False


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    #: per row, a tone for the whole row ("" for none); see rows.Tone
    tones: tuple[str, ...] = ()


@dataclass(frozen=True)
class Figure:
    """A PNG image (bytes) with the title it is found by and an alt text for screen readers."""

    title: str
    png: bytes
    alt: str


Block = Heading | Paragraph | Table | Figure


@dataclass(frozen=True)
class Page:
    """One run's report: headline and warnings first, then the blocks, then how it was made."""

    kind: str
    title: str
    headline: str
    blocks: Sequence[Block]
    warnings: Sequence[str] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    sources: Sequence[str] = ()


def row_table(rows: Sequence[Row], header: tuple[str, str] = ("", "")) -> Table:
    """Labelled rows (an estimate's summary) as a two-column table keeping their tones."""
    return Table(header, tuple((r.label, r.text) for r in rows), tuple(r.tone for r in rows))


_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_IMAGE = re.compile(r"^!\[[^\]]*\]\([^)]*\)$")
_NUMBERS = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")


def _cells(line: str) -> tuple[str, ...]:
    inner = line.strip().removeprefix("|").removesuffix("|")
    return tuple(c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner))


def markdown_blocks(text: str) -> list[Block]:
    """The subset of markdown the reports write: '##' headings, pipe tables, paragraphs.

    A level-1 heading is dropped (the page has its own title), so are image lines (the
    page embeds its own figures); inline markup is kept as text.
    """
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or _IMAGE.match(line) or re.match(r"^# ", line):
            i += 1
        elif line.startswith("#"):
            blocks.append(Heading(line.lstrip("#").strip()))
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1].strip()):
            header, body = _cells(line), []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                body.append(_cells(lines[i]))
                i += 1
            blocks.append(Table(header, tuple(body)))
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(("#", "|")):
                paragraph.append(lines[i].strip())
                i += 1
            blocks.append(Paragraph(" ".join(paragraph)))
    return blocks


def group_warnings(found: Iterable[tuple[str, str]], examples: int = 3, limit: int = 12) -> list[str]:
    """(where, message) pairs as one line per kind of message: how often, and where (a few).

    Messages that differ only in their numbers are one kind (shown as first seen). At most
    ``limit`` lines, the most frequent first; a last line says how many kinds were left out.
    """
    kinds: dict[str, tuple[str, list[str], set[str]]] = {}
    for where, message in found:
        _, places, texts = kinds.setdefault(_NUMBERS.sub("#", message), (message, [], set()))
        places.append(where)
        texts.add(message)
    ranked = sorted(kinds.values(), key=lambda kind: -len(kind[1]))
    lines = []
    for message, places, texts in ranked[:limit]:
        shown = "; ".join(places[:examples]) + ("; ..." if len(places) > examples else "")
        vary = ", numbers vary" if len(texts) > 1 else ""
        count = f"{len(places)} times{vary}: " if len(places) > 1 else ""
        lines.append(f"{message} ({count}{shown})")
    if len(ranked) > limit:
        lines.append(f"{len(ranked) - limit} more kinds of warning; every one is in the JSONL log")
    return lines
