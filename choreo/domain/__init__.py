"""Pure domain decisions: no Celery, kombu, SQL or Redis imports here (unit-tested with no broker)."""
