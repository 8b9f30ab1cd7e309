"""A Plain-style app: its background work lives in app/jobs.py and app/chores.py."""
