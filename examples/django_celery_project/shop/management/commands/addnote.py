from django.core.management.base import BaseCommand

from shop.models import Note


class Command(BaseCommand):
    help = "Add a note."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("text")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        note = Note.objects.create(text=options["text"])
        self.stdout.write(f"added note {note.pk}")
