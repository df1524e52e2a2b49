"""What every ``tailguard`` command shares: how a mistake in the input ends the command.

Any TailguardError (bad input, never a bug) prints one red line and exits with status
2, without a traceback; bugs still show theirs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from .errors import TailguardError

EXIT_BAD_INPUT = 2


def fail(exc: Exception) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] [red]{escape(str(exc))}[/red]")
    raise typer.Exit(EXIT_BAD_INPUT)


@contextmanager
def bad_input_exits() -> Iterator[None]:
    """Turn tailguard's input errors into a one-line message and exit status 2."""
    try:
        yield
    except TailguardError as exc:
        fail(exc)
