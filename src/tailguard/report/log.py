"""The files a run leaves: a JSON header with provenance and a JSONL log, one record a line.

Every report (estimate, attack, harden, bench) is written as ``<stem>.json`` (what
the run was: its kind, settings, package versions, git revision) beside a JSONL
log (one line per step, evaluation or benchmark record), and the HTML page is
rendered from these two files only, so it can be rebuilt later without a model
call (``tailguard.report.render``). Infinite values are written as the strings
"inf" / "-inf", as in ``Estimate.to_json``; JSON stays standard.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ..result import _decode, _encode

SCHEMA_VERSION = 1
#: keys every header carries besides the run's own content
ENVELOPE = ("kind", "log", "schema_version", "versions", "git")
_PACKAGES = ("tailguard", "torch", "numpy", "scipy", "openturns", "ray", "matplotlib", "scikit-learn")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None if absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_revision() -> dict[str, Any]:
    """HEAD of the repository holding this file, and whether the work tree has changes."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                 timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def write_log(header_path: Path, kind: str, header: dict[str, Any], log_name: str,
              rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``header`` (with the envelope: kind, log name, versions, git) and its JSONL log beside it.

    Returns the log's path. The header's own keys must not collide with the envelope's.
    """
    clash = set(ENVELOPE) & set(header)
    if clash:
        raise InvalidArgumentError(f"header keys {sorted(clash)} are reserved for the envelope")
    header_path.parent.mkdir(parents=True, exist_ok=True)
    envelope = {"kind": kind, "log": log_name, "schema_version": SCHEMA_VERSION,
                "versions": versions(), "git": git_revision()}
    header_path.write_text(json.dumps(_encode({**envelope, **header}), indent=1, allow_nan=False))
    log_path = header_path.parent / log_name
    with log_path.open("w") as out:
        for row in rows:
            out.write(json.dumps(_encode(row), allow_nan=False) + "\n")
    return log_path


def read_header(path: Path) -> dict[str, Any]:
    """The decoded JSON header (infinities restored)."""
    return _decode(json.loads(path.read_text()))  # type: ignore[no-any-return]


def read_log(header_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, rows): the header and every line of the JSONL log it names, decoded."""
    header = read_header(header_path)
    lines = (header_path.parent / header["log"]).read_text().splitlines()
    return header, [_decode(json.loads(line)) for line in lines if line.strip()]
