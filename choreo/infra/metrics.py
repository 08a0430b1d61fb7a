"""Counters shared by every process of every domain, kept in Redis (duplicates absorbed,
retries...).

Losing them (a Redis restart) loses figures, never correctness: nothing decides on them.
"""

from __future__ import annotations

import logging

import redis

log = logging.getLogger("choreo.infra.metrics")
# poison: deliveries the protocol guard refused before Celery read them (also in dead_lettered).
NAMES = ("processed", "duplicates", "retries", "dead_lettered", "poison", "relayed")


def key(prefix: str, name: str) -> str:
    """The Redis hash of one counter, a field per domain."""
    return f"{prefix}:metrics:{name}"


def _text(field: bytes | str) -> str:
    return field.decode() if isinstance(field, bytes) else field


class Metrics:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def incr(self, name: str, domain: str, by: int = 1) -> None:
        try:
            self.client.hincrby(key(self.prefix, name), domain, by)
        except redis.RedisError as exc:
            log.debug("metrics unavailable: %s", exc)

    def snapshot(self) -> dict[str, dict[str, int]]:
        out = {}
        for name in NAMES:
            raw = self.client.hgetall(key(self.prefix, name))
            # Bytes unless the client was built with decode_responses (ours is not).
            out[name] = {_text(k): int(v) for k, v in raw.items()}
        return out
