#!/usr/bin/env bash
# Creates bench/.venv: jobtable (editable, from this repo) plus the peers it is
# measured against.  The peers live ONLY here, never in the project's own
# environment or dependencies.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-python3}"

if [ ! -x "$here/.venv/bin/python" ]; then
    "$python" -m venv "$here/.venv"
fi
pip="$here/.venv/bin/pip"
"$pip" install --quiet --upgrade pip
"$pip" install --quiet -e "$repo[mysql]"   # the mysql extra: MariaDB runs (mysqlclient)
"$pip" install --quiet -r "$here/requirements.txt"
"$here/.venv/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("jobtable", "celery", "kombu", "redis", "pgqueuer", "procrastinate", "psycopg", "SQLAlchemy", "py-spy"):
    try:
        print(f"{name:14} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name:14} MISSING")
PY
