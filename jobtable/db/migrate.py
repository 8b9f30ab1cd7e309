"""Schema migrations through Alembic, run from code (``jobtable migrate``).

jobtable keeps its own version table, so it can live in a database whose
application also uses Alembic.  Alembic is imported only to migrate: the
schema check every process makes reads revisions through ``revisions.py``
(importing Alembic logs INFO lines, see there).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from ..exceptions import SchemaTooNew
from .revisions import VERSION_TABLE, current_revision, head_revision, known_revisions

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["VERSION_TABLE", "current_revision", "head_revision", "known_revisions", "upgrade", "downgrade"]

SCRIPT_LOCATION = str(Path(__file__).with_name("migrations"))
# Serialises concurrent `jobtable migrate` runs on PostgreSQL.
_MIGRATE_LOCK_KEY = 0x6A6F627461626C65  # "jobtable"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def too_new(where: str, revision: str) -> SchemaTooNew:
    return SchemaTooNew(
        f"The database {where} was migrated by a newer jobtable (schema revision {revision!r}); this jobtable "
        f"only knows revisions up to {head_revision()!r}. Upgrade jobtable (pip install -U jobtable) where this "
        "command runs; `jobtable migrate` cannot go back from a schema it does not know."
    )


def upgrade(
    engine: Engine, revision: str = "head", on_applied: Callable[[str, str], None] | None = None
) -> tuple[str | None, str]:
    """Upgrade the schema; returns (revision before, revision after).
    ``on_applied(revision, title)`` is called after each revision's step
    (``jobtable migrate`` shows them on a terminal)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK_KEY})
        before = current_revision(conn)
        if before is not None and before not in known_revisions():
            raise too_new(engine.url.render_as_string(hide_password=True), before)
        from alembic import command

        config = alembic_config(conn)
        if on_applied is not None:
            config.attributes["on_version_apply"] = _step_reporter(on_applied)
        command.upgrade(config, revision)
        after = current_revision(conn)
    assert after is not None
    return before, after


def _step_reporter(on_applied: Callable[[str, str], None]) -> Callable[..., None]:
    """Alembic's ``on_version_apply`` hook, reduced to (revision, title)."""

    def report(*, step: Any, **_: Any) -> None:
        revision = getattr(step, "up_revision_id", None) or "?"
        title = (getattr(step, "doc", None) or "").strip().splitlines()
        on_applied(str(revision), title[0] if title else "")

    return report


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)
