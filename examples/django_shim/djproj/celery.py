"""The project's Celery app -- Celery's Django layout, with the one change
step 4 of the migration guide asks for: the import."""

import os

# from celery import Celery
from jobtable.shim import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")

app = Celery("djproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
# No packages: every installed Django app's tasks.py (Django set up first).
app.autodiscover_tasks()
