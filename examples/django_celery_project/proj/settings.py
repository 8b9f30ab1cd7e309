"""Settings of the example Django project.

One PostgreSQL database holds the project's tables and jobtable's
(``PROJ_DATABASE_URL``, a SQLAlchemy-style URL such as
``postgresql+psycopg://app@db/app``): jobtable's are prefixed ``jobtable_``.
"""

import os
from datetime import timedelta
from urllib.parse import unquote, urlsplit

from kombu import Queue

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["shop"]

DATABASE_URL = os.environ.get("PROJ_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/proj")
_db = urlsplit(DATABASE_URL)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.path.lstrip("/"),
        "USER": unquote(_db.username or ""),
        "PASSWORD": unquote(_db.password or ""),
        "HOST": _db.hostname or "",
        "PORT": str(_db.port or ""),
    }
}

# -- Celery, read by app.config_from_object("django.conf:settings", namespace="CELERY")
CELERY_BROKER_URL = "jobtable+" + DATABASE_URL
CELERY_RESULT_BACKEND = "jobtable+" + DATABASE_URL
if os.environ.get("PROJ_REDIS_URL"):  # step 0, the reference: Celery on Redis, as before the migration
    CELERY_BROKER_URL = CELERY_RESULT_BACKEND = os.environ["PROJ_REDIS_URL"]
    _prefix = {"global_keyprefix": os.environ.get("PROJ_REDIS_PREFIX", "proj:")}
    CELERY_BROKER_TRANSPORT_OPTIONS = CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = _prefix
CELERY_TASK_DEFAULT_QUEUE = "proj"
CELERY_TASK_QUEUES = [Queue("proj"), Queue("dead_letter")]
CELERY_TASK_ROUTES = {"shop.tasks.dead_letter": {"queue": "dead_letter"}}
CELERY_WORKER_TIMER_PRECISION = 0.1  # short countdowns (autoretry) are not held up to 1 s
CELERY_BEAT_SCHEDULE = {
    "pulse-5s": {"task": "shop.tasks.beat_pulse", "schedule": 5.0, "args": ("5s",)},
    "pulse-10s": {"task": "shop.tasks.beat_pulse", "schedule": timedelta(seconds=10), "args": ("10s",)},
}
