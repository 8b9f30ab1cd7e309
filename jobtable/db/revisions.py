"""Which schema revision a database is at, and which this code needs --
without importing Alembic.

Every process that opens the database checks its schema once
(``engine.check_schema``).  Alembic is not fit for that check: importing it
logs seven INFO lines ("setup plugin alembic.autogenerate..."), each
``MigrationContext`` two more ("Context impl ...", "Will assume ...") -- and
a Celery worker, which routes the root logger to its log at INFO, printed all
of them for its main process and every pool child.  Importing it also costs
tens of milliseconds per process.  So the check reads the version table with
one SELECT, and the revisions from the migration files' ``revision = "..."``
and ``down_revision = "..."`` lines (``tests/test_migrations.py`` checks that
this agrees with Alembic's own reading).  Alembic runs only to migrate
(``migrate.py``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

VERSION_TABLE = "jobtable_alembic_version"
VERSIONS_DIRECTORY = Path(__file__).with_name("migrations") / "versions"

_ASSIGNMENT = re.compile(r"""^(revision|down_revision)\s*(?::[^=]*)?=\s*(?:["']([^"']+)["']|None)\s*$""", re.M)


@functools.cache
def revision_chain() -> tuple[str, ...]:
    """The revisions of the migration files, oldest first."""
    parents: dict[str, str | None] = {}
    for path in sorted(VERSIONS_DIRECTORY.glob("*.py")):
        found = {name: value or None for name, value in _ASSIGNMENT.findall(path.read_text(encoding="utf-8"))}
        if "revision" in found and found["revision"]:
            parents[found["revision"]] = found.get("down_revision")
    children = {parent: child for child, parent in parents.items()}
    if len(children) != len(parents):
        raise RuntimeError(f"The migrations in {VERSIONS_DIRECTORY} branch: each revision must have one child.")
    chain: list[str] = []
    current = children.get(None)
    while current is not None:
        chain.append(current)
        current = children.get(current)
    if len(chain) != len(parents):
        raise RuntimeError(f"The migrations in {VERSIONS_DIRECTORY} do not form one chain from the first.")
    return tuple(chain)


def head_revision() -> str:
    return revision_chain()[-1]


def known_revisions() -> set[str]:
    """Every schema revision this version of jobtable has a migration for."""
    return set(revision_chain())


def current_revision(conn: Connection) -> str | None:
    """The database's revision (None: never migrated), read as Alembic
    stores it: one row of the version table."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        # Alembic's get_current_revision() refuses several heads too.
        raise RuntimeError(f"The table {VERSION_TABLE} holds several revisions ({', '.join(rows)}); jobtable keeps one.")
    return rows[0] if rows else None
