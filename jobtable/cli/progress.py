"""Progress of long commands, on a terminal only.

A bar goes to stderr when stderr is a terminal; in a pipe, a log file or
cron nothing is shown, so scripts see the commands' one-line summaries
(on stdout) and nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click


def on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """``update(n)`` after each batch; a bar of ``total`` on a terminal."""
    if total <= 0 or not on_terminal():
        yield lambda _n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True) as bar:
        yield bar.update


def note(message: str) -> None:
    """A line for a person watching (stderr, terminal only)."""
    if on_terminal():
        click.echo(message, err=True)
