"""Redis idempotency keys: a fast 'seen it' check in front of each service's inbox table.

Redis is the fast path, the database's unique (consumer, event id) key is the truth: if
Redis is down or was restarted empty, a duplicate still cannot change anything.
"""

from __future__ import annotations

import logging

import redis

from choreo.infra import metrics

log = logging.getLogger("choreo.infra.idempotency")


class Idempotency:
    def __init__(self, client: redis.Redis, prefix: str, ttl: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl

    def key(self, consumer: str, event_id: str) -> str:
        return f"{self.prefix}:idem:{consumer}:{event_id}"

    def seen(self, consumer: str, event_ids: list[str]) -> list[bool]:
        """For each event id, whether `consumer` recorded it: one round trip for a whole batch.
        Redis away: nothing is known here, the inbox table decides."""
        if not event_ids:
            return []
        try:
            pipe = self.client.pipeline(transaction=False)
            for event_id in event_ids:
                pipe.exists(self.key(consumer, event_id))
            return [bool(n) for n in pipe.execute()]
        except redis.RedisError as exc:
            log.warning(
                "redis unavailable for idempotency check; relying on the inbox table: %s", exc
            )
            return [False] * len(event_ids)

    def remember(
        self, consumer: str, event_ids: list[str], counts: dict[str, int] | None = None
    ) -> None:
        """Record the keys, and bump the `counts` metrics of `consumer`, in one round trip."""
        counts = {name: n for name, n in (counts or {}).items() if n}
        if not event_ids and not counts:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for event_id in event_ids:
                pipe.set(self.key(consumer, event_id), 1, ex=self.ttl)
            for name, n in counts.items():
                pipe.hincrby(metrics.key(self.prefix, name), consumer, n)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("redis unavailable to record idempotency keys: %s", exc)

    def count(self) -> int:
        return sum(1 for _ in self.client.scan_iter(f"{self.prefix}:idem:*", count=1000))
