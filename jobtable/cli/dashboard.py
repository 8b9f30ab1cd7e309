"""``jobtable dashboard``: serve the jobs dashboard with uvicorn."""

from __future__ import annotations

import click

from .group import main, with_app


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--basic-auth",
    "basic_auth",
    envvar="JOBTABLE_DASHBOARD_BASIC_AUTH",
    default=None,
    metavar="USER:PASSWORD",
    help="Require this user and password (also JOBTABLE_DASHBOARD_BASIC_AUTH).",
)
@click.option(
    "--token",
    envvar="JOBTABLE_DASHBOARD_TOKEN",
    default=None,
    help="Require this token: 'Authorization: Bearer TOKEN', or as the basic-auth password "
    "(also JOBTABLE_DASHBOARD_TOKEN).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    envvar="JOBTABLE_DASHBOARD_ALLOWED_HOSTS",
    metavar="NAME[:PORT]",
    help="Also answer to this host name (repeatable; '*.example.com' for subdomains; "
    "JOBTABLE_DASHBOARD_ALLOWED_HOSTS takes a comma- or space-separated list). Without a password "
    "only loopback names are served, against DNS rebinding.",
)
@click.option("--read-only", is_flag=True, envvar="JOBTABLE_DASHBOARD_READ_ONLY", help="Show, never change.")
@click.option("--refresh", default=5.0, show_default=True, help="Seconds between live updates (0: off).")
@with_app
def dashboard(
    host: str,
    port: int,
    basic_auth: str | None,
    token: str | None,
    allowed_hosts: tuple[str, ...],
    read_only: bool,
    refresh: float,
) -> None:
    """Serve the jobs dashboard (pip install 'jobtable[dashboard]').

    Without --basic-auth or --token only requests from this machine are
    allowed, so listening on a public interface needs one of them.
    """
    try:
        import uvicorn

        from ..dashboard import create_app
    except ImportError as exc:
        raise click.ClickException(
            f"The dashboard needs its extra dependencies ({exc.name} is missing): "
            "pip install 'jobtable[dashboard]'."
        ) from None
    credentials = None
    if basic_auth:
        user, sep, password = basic_auth.partition(":")
        if not sep or not user or not password:
            raise click.BadParameter("write USER:PASSWORD", param_hint="--basic-auth")
        credentials = (user, password)
    names = [name for value in allowed_hosts for name in value.replace(",", " ").split()]
    try:
        app = create_app(
            basic_auth=credentials, token=token, read_only=read_only, refresh_seconds=refresh, allowed_hosts=names
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allowed-host / JOBTABLE_DASHBOARD_ALLOWED_HOSTS") from None
    if credentials is None and not token and host not in ("127.0.0.1", "::1", "localhost"):
        click.echo(
            f"Listening on {host}, but without --basic-auth or --token only requests from this machine are allowed.",
            err=True,
        )
    # Before listening: a missing database (no file, never migrated) fails
    # here with the fix, not later as an error page per request.
    from ..db import engine as db_engine

    db_engine.check_schema(db_engine.get_engine())
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"jobtable dashboard on http://{shown}:{port}/ (Ctrl+C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)
