"""A shop's background work, half way from Celery to jobtable."""
