"""Tasks of the notes app: Celery task code as written for Celery (only
the import differs), using the ORM and a management command."""

from django.core.management import call_command
from django.db import connection

# from celery import shared_task
from jobtable.shim import shared_task

from .models import Note


@shared_task
def add_note(text: str) -> int:
    """Add a note through the `addnote` management command; how many notes have this text."""
    call_command("addnote", text)
    return Note.objects.filter(text=text).count()


@shared_task
def count_notes() -> int:
    """How many notes there are (the ORM)."""
    return Note.objects.count()


@shared_task
def connection_was_open() -> bool:
    """Whether Django's connection was open when the task started (the worker
    closes connections around tasks, as Celery's Django fix-up does), then
    use it."""
    was_open = connection.connection is not None
    Note.objects.exists()
    return was_open
