"""`choreo status` as data: orders by state, queues, dead letters, unrouted messages, processes
(and each one's /health and /ready; "held": those stopped on purpose), Prometheus, counters.

Every source that is away (database, broker, Redis) is reported in the result, never raised:
a status is most wanted when something is down.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import redis
from sqlalchemy.exc import SQLAlchemyError

from choreo.app.queries import system_summary
from choreo.infra.metrics import Metrics
from choreo.infra.redis_client import redis_client
from choreo.messaging.admin import BrokerAdmin
from choreo.ops import prometheus
from choreo.ops.stack import Stack
from config.settings import Settings

PROBE_TIMEOUT = 0.5  # seconds per GET: a status is most wanted when something hangs
HELD = "stopped (by choreo stop)"  # the health of a process stopped on purpose, not down


def gather_status(settings: Settings) -> dict[str, Any]:
    try:
        data: dict[str, Any] = system_summary(settings)
    except SQLAlchemyError as exc:  # nothing started yet, or a database server away
        data = {
            "orders": {"total": 0, "by_state_reason": []},
            "database_error": _database_error(exc),
        }
    try:
        with BrokerAdmin(settings) as admin:
            data["queues"] = admin.queue_stats()
    except Exception as exc:  # any broker failure (refused, auth, timeout) is a status line
        data["queues"] = []
        data["broker_error"] = repr(exc)
    data["dlq"] = {
        q["name"].split(".")[-2]: q["messages"]
        for q in data["queues"]
        if q["name"].endswith(".dlq")
    }
    data["unrouted"] = next(
        (q["messages"] for q in data["queues"] if q["name"] == f"{settings.namespace}.unrouted"),
        None,
    )
    stack = Stack(settings)
    data["processes"] = stack.running()
    data["health"] = process_health(settings, data["processes"])
    data["held"] = stack.held_names()
    for name in data["held"]:
        if name in data["health"] and not data["processes"][name]:
            data["health"][name]["health"] = HELD
    pid = prometheus.running(settings)
    data["prometheus"] = {"url": prometheus.url(settings), "pid": pid, "running": pid is not None}
    try:
        metrics = Metrics(redis_client(settings), settings.redis_prefix)
        data["metrics"] = metrics.snapshot()
        data["metrics_since"] = metrics.since()  # None: not recorded (before a `choreo up`)
    except redis.RedisError as exc:
        data["metrics"], data["metrics_since"] = {}, None
        data["redis_error"] = repr(exc)
    return data


def _database_error(exc: SQLAlchemyError) -> str:
    """One line saying why the database did not answer: the driver's error under a
    StatementError (DBAPIError and kin: only they have .orig), else the SQLAlchemy error itself
    (a pool TimeoutError, an ArgumentError). An empty message leaves the type's name alone."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def _get(client: httpx.Client, url: str | None) -> int | None:
    """The status code of GET url, or None when nothing answers in time."""
    if url is None:
        return None
    try:
        return client.get(url).status_code
    except httpx.HTTPError:
        return None


def process_health(settings: Settings, pids: dict[str, int | None]) -> dict[str, dict[str, Any]]:
    """Per process: pid, health and metrics URLs, "health" (ok | down | not running) and "ready"
    (True/False, None when not asked). Running processes are asked in parallel, never the others."""
    urls = prometheus.endpoints(settings)
    asks = [
        (name, kind)
        for name, pid in pids.items()
        if pid and name in urls
        for kind in ("health", "ready")
    ]
    with (
        httpx.Client(timeout=PROBE_TIMEOUT, trust_env=False) as client,
        ThreadPoolExecutor(max_workers=max(1, len(asks))) as pool,
    ):
        codes = dict(
            zip(asks, pool.map(lambda a: _get(client, urls[a[0]][a[1]]), asks), strict=True)
        )
    out: dict[str, dict[str, Any]] = {}
    for name, pid in pids.items():
        url = urls.get(name, {})
        record: dict[str, Any] = {
            "pid": pid,
            "health_url": url.get("health"),
            "metrics_url": url.get("metrics"),
            "health": "not running",
            "ready": None,
        }
        if pid:
            record["health"] = "ok" if codes.get((name, "health")) == 200 else "down"
            ready = codes.get((name, "ready"))
            record["ready"] = None if ready is None else ready == 200
        out[name] = record
    return out
