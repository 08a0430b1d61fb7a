"""The Celery side of choreo: one app per service with one task per message type it hears,
the consumer that runs a worker's deliveries in batches through the one adapter every service
shares (tasks.adapter), the protocol guard, the outbox relay and the observability bootstep."""
