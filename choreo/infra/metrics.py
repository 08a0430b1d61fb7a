"""Counters shared by every process of every domain, kept in Redis (duplicates absorbed,
retries...), and since when they count.

Losing them (a Redis restart) loses figures, never correctness: nothing decides on them. They
outlive a stack: `choreo up` on a stack with nothing running resets them and records the time
(`reset`), which `choreo status` shows; the hot path only increments.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import redis

log = logging.getLogger("choreo.infra.metrics")
# poison: deliveries the protocol guard refused before Celery read them (also in dead_lettered).
NAMES = ("processed", "duplicates", "retries", "dead_lettered", "poison", "relayed")


def key(prefix: str, name: str) -> str:
    """The Redis hash of one counter, a field per domain."""
    return f"{prefix}:metrics:{name}"


def since_key(prefix: str) -> str:
    """When the counters were last reset (ISO 8601, UTC): not a counter, not in NAMES."""
    return f"{prefix}:metrics:since"


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

    def reset(self, now: datetime | None = None) -> str:
        """Zero every counter and record the time, in one transaction; returns the time."""
        stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*(key(self.prefix, name) for name in NAMES))
        pipe.set(since_key(self.prefix), stamp)
        pipe.execute()
        return stamp

    def since(self) -> str | None:
        """When the counters were last reset; None if never (counted by an older choreo, or a
        Redis restarted since: unknown)."""
        raw = self.client.get(since_key(self.prefix))
        return _text(raw) if raw is not None else None

    def snapshot(self) -> dict[str, dict[str, int]]:
        out = {}
        for name in NAMES:
            raw = self.client.hgetall(key(self.prefix, name))
            # Bytes unless the client was built with decode_responses (ours is not).
            out[name] = {_text(k): int(v) for k, v in raw.items()}
        return out
