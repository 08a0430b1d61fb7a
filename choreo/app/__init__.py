"""The application layer: unit of work and outbox, the order event store, projections, queries,
the composition root."""
