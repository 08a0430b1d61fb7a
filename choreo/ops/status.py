"""`choreo status` as data: orders by state, queues, dead letters, unrouted messages, processes, counters.

Every source that is away (database, broker, Redis) is reported in the result, never raised:
a status is most wanted when something is down.
"""
from __future__ import annotations

from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from choreo.app.queries import system_summary
from choreo.infra.metrics import Metrics
from choreo.infra.redis_client import redis_client
from choreo.messaging.admin import BrokerAdmin
from choreo.ops.stack import Stack
from config.settings import Settings


def gather_status(settings: Settings) -> dict[str, Any]:
    try:
        data: dict[str, Any] = system_summary(settings)
    except SQLAlchemyError as exc:  # nothing started yet, or a database server away
        data = {"orders": {"total": 0, "by_state_reason": []},
                "database_error": f"{type(exc.orig or exc).__name__}: {str(exc.orig or exc).splitlines()[0]}"}
    try:
        with BrokerAdmin(settings) as admin:
            data["queues"] = admin.queue_stats()
    except Exception as exc:  # any broker failure (refused, auth, timeout) is a status line
        data["queues"] = []
        data["broker_error"] = repr(exc)
    data["dlq"] = {q["name"].split(".")[-2]: q["messages"] for q in data["queues"] if q["name"].endswith(".dlq")}
    data["unrouted"] = next((q["messages"] for q in data["queues"] if q["name"] == f"{settings.namespace}.unrouted"),
                            None)
    data["processes"] = Stack(settings).running()
    try:
        data["metrics"] = Metrics(redis_client(settings), settings.redis_prefix).snapshot()
    except redis.RedisError as exc:
        data["metrics"] = {}
        data["redis_error"] = repr(exc)
    return data
