"""Settings of the example Django project (its own SQLite database: the
jobtable database is JOBTABLE_DATABASE_URL, as for any project)."""

import os
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "notes",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_SHIM_DB", str(BASE_DIR / "db.sqlite3")),
    }
}

# Read by app.config_from_object("django.conf:settings", namespace="CELERY")
# before any task module exists: the entry is resolved when the worker starts.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_BEAT_SCHEDULE = {
    "tick": {"task": "notes.tasks.add_note", "schedule": timedelta(seconds=10), "args": ("tick",)},
}
