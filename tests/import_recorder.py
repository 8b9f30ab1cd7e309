"""Records that it was imported: a message naming it as an ORM model must
not make a worker import it."""

from __future__ import annotations

import os

path = os.environ.get("JT_IMPORT_RECORD")
if path:
    with open(path, "a") as record:
        record.write("imported\n")


class User:  # not a model: the lookup must refuse it even when loaded
    pass
