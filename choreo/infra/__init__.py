"""Infrastructure: database engines, Redis (idempotency keys, counters), structured logs."""
