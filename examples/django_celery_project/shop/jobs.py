"""Step 3 of the migration guide: a task rewritten as a Job."""

from django.core.management import call_command

from jobtable import Job, register_job


@register_job
class AddNoteJob(Job):
    def __init__(self, text: str) -> None:
        self.text = text

    def default_queue(self) -> str:
        return "proj"

    def run(self) -> int:
        from shop.models import Note

        call_command("addnote", self.text)
        return Note.objects.filter(text=self.text).count()
