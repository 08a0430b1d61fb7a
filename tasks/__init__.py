"""Celery side of choreo: one app per domain, the thin adapter task, worker customisations."""
