"""Settling after the faults stop, and the figures a run reports (counters, logs, dead letters)."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from sqlmodel import Session, select

from choreo.app.queries import order_states, unsent_total
from choreo.devtools.chaos.report import Journal
from choreo.infra.db import engine_for
from choreo.infra.metrics import Metrics
from choreo.infra.redis_client import redis_client
from choreo.messaging.admin import BrokerAdmin
from choreo.ops.stack import rabbitmqctl
from config.settings import DOMAINS, Settings
from consumers.order.rules import TERMINAL
from models.tables import DeadLetter


def _busy_queues(settings: Settings, vhost: str) -> dict[str, int]:
    """Queues (not DLQs) holding messages, ready or unacknowledged (a passive declare sees only
    ready)."""
    out = rabbitmqctl(
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages",
        "--no-table-headers",
        cluster_dir=settings.broker_cluster_dir,
    )
    busy = {}
    for line in out.splitlines():
        parts = line.split()
        if (
            len(parts) == 2
            and not parts[0].endswith((".dlq", ".unrouted"))
            and parts[1].isdigit()
            and int(parts[1])
        ):
            busy[parts[0]] = int(parts[1])
    return busy


def settle(
    settings: Settings, vhost: str, order_ids: list[str], deadline: float, journal: Journal
) -> dict:
    """Wait until every order is terminal, every outbox drained and every queue idle, twice in a
    row."""
    states: dict = {}
    calm = 0
    last_report = 0.0
    while time.monotonic() < deadline:
        states = order_states(settings, order_ids)
        open_orders = [o for o in order_ids if states.get(o, ("MISSING",))[0] not in TERMINAL]
        unsent = unsent_total(settings) if not open_orders else None
        busy = _busy_queues(settings, vhost) if not open_orders and not unsent else None
        if not open_orders and not unsent and not busy:
            calm += 1
            if calm >= 2:
                return states
        else:
            calm = 0
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                journal.note(
                    "settling",
                    f"{len(open_orders)} open orders, unsent {unsent}, busy queues {busy}",
                    style="dim",
                )
        time.sleep(1.0)
    return states


def metrics_snapshot(settings: Settings) -> dict[str, dict[str, int]]:
    client = redis_client(settings)
    try:
        return Metrics(client, settings.redis_prefix).snapshot()
    finally:
        client.close()


def total(*snapshots: dict, name: str) -> int:
    return sum(sum(s.get(name, {}).values()) for s in snapshots)


def log_count(log_dir: Path, needle: str) -> int:
    """Lines saying `needle` in the workers' logs: survives the Redis restart that resets
    counters."""
    n = 0
    for path in log_dir.glob("worker-*.log"):
        with open(path, errors="replace") as f:
            n += sum(1 for line in f if needle in line)
    return n


_IDS = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|ord-[0-9a-f]+|chaos-poison-[0-9a-f]+"
)


def _reason(text: str, width: int = 120) -> str:
    """A reason with its ids blanked out, so equal causes group together."""
    text = _IDS.sub("…", text)
    return text if len(text) <= width else text[: width - 1] + "…"


def dead_letter_figures(settings: Settings) -> dict:
    """DLQ messages and dead_letters rows, grouped by domain and reason (ids stripped)."""
    queued: Counter = Counter()
    with BrokerAdmin(settings) as admin:
        depth = {q["name"]: q["messages"] or 0 for q in admin.queue_stats()}
        for d in DOMAINS:
            for letter in admin.peek(d, depth.get(admin.names.dlq(d), 0)):
                queued[f"{d}: {_reason(letter.reason)}"] += 1
    recorded: Counter = Counter()
    for d in DOMAINS:
        with Session(engine_for(settings, d)) as s:
            for type_, reason in s.exec(select(DeadLetter.type, DeadLetter.reason)):
                recorded[f"{d} {type_}: {_reason(reason)}"] += 1
    return {
        "dlq_messages": sum(queued.values()),
        "dlq_by_reason": dict(queued.most_common()),
        "dead_letter_rows": sum(recorded.values()),
        "dead_letter_rows_by_reason": dict(recorded.most_common()),
    }
