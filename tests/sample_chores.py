"""Chores used by the tests (``--app tests.sample_chores``)."""

from __future__ import annotations

from jobtable.chores import Chore, register_chore


@register_chore("sample")
def tidy() -> str:
    """Tidy up.

    A longer description that the list does not show.
    """
    return "tidied 3 things"


@register_chore("sample")
def broken() -> None:
    """Always fails."""
    raise ValueError("boom on purpose")


@register_chore("sample")
def quiet() -> None:
    """Returns nothing."""


@register_chore("counting")
class Recount(Chore):
    """Recount the things."""

    def run(self) -> int:
        return 42
