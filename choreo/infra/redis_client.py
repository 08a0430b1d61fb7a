"""The Redis connection every process builds the same way (idempotency keys, counters, breaker
state)."""

from __future__ import annotations

import redis

from choreo.infra.tls import redis_options
from config.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=2,
        socket_connect_timeout=2,
        health_check_interval=15,
        retry_on_timeout=True,
        **redis_options(settings),
    )
