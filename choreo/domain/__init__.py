"""Pure domain decisions: no Celery, kombu, SQL or Redis imports (unit-tested with no broker)."""
