"""``python -m jobtable`` is the ``jobtable`` command."""

from .cli import main

main()
