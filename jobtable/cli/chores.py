"""``jobtable chores list`` and ``jobtable chores run``."""

from __future__ import annotations

import click

from ..chores import chores_registry, run_chore
from .group import main, with_app


@main.group("chores")
def chores_group() -> None:
    """Routine maintenance tasks (chores.py of the app and of JOBTABLE_PACKAGES)."""


_names = click.option("--name", "names", multiple=True, help="Only this chore (repeatable).")
_groups = click.option("--group", "groups", multiple=True, help="Only chores of this group (repeatable).")


@chores_group.command("list")
@_names
@_groups
@with_app
def list_chores(names: tuple[str, ...], groups: tuple[str, ...]) -> None:
    """Registered chores with their descriptions."""
    selected = chores_registry.select(names, groups)
    if not selected:
        click.echo("No chores registered.")
        return
    width = max(len(c.name) for c in selected)
    for chore in selected:
        description = chore.description.splitlines()[0] if chore.description else ""
        click.echo(f"{chore.name.ljust(width)}  {description}".rstrip())


@chores_group.command("run")
@_names
@_groups
@click.option("--dry-run", is_flag=True, help="Show which chores would run, without running them.")
@with_app
def run_chores(names: tuple[str, ...], groups: tuple[str, ...], dry_run: bool) -> None:
    """Run chores (all, or those named).  Exits 1 if any failed."""
    selected = chores_registry.select(names, groups)
    if not selected:
        click.echo("No chores registered.")
        return
    failed = []
    for chore in selected:
        if dry_run:
            click.echo(f"Would run {chore.name}")
            continue
        click.echo(f"Running {chore.name}... ", nl=False)
        outcome = run_chore(chore)
        if outcome.ok:
            click.echo(f"done in {outcome.seconds:.2f}s" + ("" if outcome.value is None else f": {outcome.value}"))
        else:
            failed.append(chore.name)
            click.echo(f"FAILED ({type(outcome.error).__name__}: {outcome.error})")
            click.echo(outcome.traceback, err=True)
    if dry_run:
        return
    ok = len(selected) - len(failed)
    click.echo(f"{ok} chore(s) succeeded, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else "."))
    if failed:
        raise SystemExit(1)
