"""The same Celery task code run three ways; see README.md."""
