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

    def seen(self, consumer: str, event_id: str) -> bool:
        try:
            return bool(self.client.exists(self.key(consumer, event_id)))
        except redis.RedisError as exc:
            log.warning("redis unavailable for idempotency check; relying on the inbox table: %s", exc)
            return False

    def remember(self, consumer: str, event_id: str, count: str | None = None) -> None:
        """Record the key; with `count`, also bump that metric for `consumer`, in the same round trip."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.key(consumer, event_id), 1, ex=self.ttl)
            if count:
                pipe.hincrby(metrics.key(self.prefix, count), consumer, 1)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("redis unavailable to record idempotency key: %s", exc)

    def count(self) -> int:
        return sum(1 for _ in self.client.scan_iter(f"{self.prefix}:idem:*", count=1000))
