from django.db import models


class Event(models.Model):
    """What the tasks, hooks and signal handlers did: the driver reads it."""

    kind = models.CharField(max_length=40)
    key = models.CharField(max_length=200)
    detail = models.TextField(blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["kind", "key"], name="shop_event_kind_key")]


class Note(models.Model):
    text = models.CharField(max_length=200)
