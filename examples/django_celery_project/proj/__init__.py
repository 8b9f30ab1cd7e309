# As Celery's Django guide has it: the app is loaded when Django starts, so
# @shared_task tasks use it.
from .celery import app as celery_app

__all__ = ("celery_app",)
