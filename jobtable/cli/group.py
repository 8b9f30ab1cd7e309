"""The ``jobtable`` click group and ``with_app``: what every command module
of the CLI imports.  Kept apart from ``cli/__init__.py``, which imports
those modules to assemble the command, so every import points down."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..exceptions import JobtableError

F = TypeVar("F", bound=Callable[..., Any])


_APP_HELP = "Module that registers your jobs (also JOBTABLE_APP). Its jobs.py, and those of JOBTABLE_PACKAGES, are imported too."


def _take_app(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # `jobtable worker --app X`: the subcommand's --app overrides the group's.
    if value is not None:
        root = ctx.find_root()
        if root.obj is None:
            root.obj = {}
        root.obj["app"] = value


def _add_app_option(command: click.Command) -> None:
    """Give a subcommand its own ``--app`` (the guide and Celery's habit put
    it after the subcommand: ``jobtable worker --app proj``)."""
    if not any(param.name in ("app", "sub_app") for param in command.params):
        command.params.append(
            click.Option(["--app", "sub_app"], default=None, expose_value=False, callback=_take_app, help=_APP_HELP)
        )


class JobtableCommand(click.Command):
    """A subcommand: accepts ``--app`` as the group does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_app_option(self)


class JobtableGroup(click.Group):
    """Turns jobtable's own errors into a clean message and exit code 1;
    its commands and subgroups accept ``--app`` too."""

    command_class = JobtableCommand
    group_class = type  # subgroups (``chores``) are JobtableGroups

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_app_option(self)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobtableError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=JobtableGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--app",
    envvar="JOBTABLE_APP",
    default=None,
    help=_APP_HELP,
)
@click.pass_context
def main(ctx: click.Context, app: str | None) -> None:
    """jobtable: a background job queue in a SQL table."""
    ctx.obj = {"app": app}


def discover_shim_tasks() -> None:
    """With a Celery-free (shim) app loaded: import its discovered task
    modules now (``autodiscover_tasks`` is lazy) and install the beat
    entries that waited for them; an entry naming a task that does not
    exist fails the command, naming both."""
    if "jobtable.shim.app" in sys.modules:
        from ..shim.app import resolve_beat_schedules

        resolve_beat_schedules()


def with_app(fn: F) -> F:
    """Import the user's jobs before the command runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..discovery import load_app

        load_app(click.get_current_context().find_root().obj.get("app"))
        discover_shim_tasks()
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
