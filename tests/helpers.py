"""Shared test helpers: start the stack by the CLI's code path, wait for outcomes with deadlines."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from choreo.messaging.wire import EMBED, celery_message  # noqa: F401 (the tests' raw-message builders)

T = TypeVar("T")


# A test of the broker alone (no service database in it) runs once, in the SQLite pass: the
# PostgreSQL pass repeats only what the database can change (make test runs both).
sqlite_pass_only = pytest.mark.skipif(
    bool(os.environ.get("CHOREO_TEST_DATABASE_SERVER")),
    reason="no database in it: runs in the SQLite pass only",
)


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll until predicate() is truthy; fail with `what` after the deadline (never a fixed
    sleep)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")


def settled(settings, order_ids: list[str], timeout: float = 90.0) -> dict:
    """Every order terminal within `timeout`, or the test fails saying how many were."""
    from choreo.ops.workload import terminal_count, wait_terminal

    states = wait_terminal(settings, order_ids, timeout, poll=0.2)
    assert terminal_count(states) == len(order_ids), (
        f"timed out after {timeout:.0f}s: {terminal_count(states)}/{len(order_ids)} orders settled"
    )
    return states


def queues_idle(settings, quiet_for: float = 1.0, timeout: float = 60.0) -> None:
    """Wait until every domain queue and retry rung has been empty for `quiet_for` seconds."""
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(settings) as admin:
        quiet_since = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [
                q
                for q in admin.queue_stats()
                if not q["name"].endswith((".dlq", ".unrouted")) and q["messages"]
            ]
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_for:
                return
            time.sleep(0.1)
    raise AssertionError("queues did not go idle")


# --- raw deliveries, as a client in any language sends them (hostile-input and fuzz tests) ---


def place_order(order_id: str | None = None, **payload) -> dict:
    """A valid place_order envelope as JSON travels (prices left to the seller); `payload`
    overrides fields after validation, so it may break the schema on purpose."""
    from choreo.ops.scenarios import make_order
    from models.envelope import make_envelope

    spec = make_order("completed")
    body = {
        "customer_id": spec.customer_id,
        "items": [{"sku": i["sku"], "qty": i["qty"]} for i in spec.items],
        "card_token": spec.card_token,
        "address": spec.address,
    }
    wire = make_envelope(
        "place_order", order_id or f"ord-hostile-{uuid.uuid4().hex[:10]}", body, source="foreign"
    ).to_wire()
    wire["payload"].update(payload)
    return wire


class Probe:
    """Sends raw deliveries straight to one domain's queue and finds them again by message id."""

    def __init__(self, settings, domain: str = "order") -> None:
        self.settings = settings
        self.domain = domain

    def send(
        self,
        body: bytes,
        headers: dict | None,
        content_type: str | None = "application/json",
        content_encoding: str | None = "utf-8",
        message_id: str | None = None,
    ) -> str:
        from choreo.messaging.admin import BrokerAdmin

        message_id = message_id or f"probe-{uuid.uuid4().hex}"
        # As a client that may write to the queue itself (the bootstrap user: no service may)
        # and vouches for nobody (no user_id): the guard's reasons come before the sender's.
        with BrokerAdmin(self.settings, service=None) as admin:
            admin.publish_raw(
                f"{self.settings.namespace}.{self.domain}",
                body,
                headers,
                exchange="",
                content_type=content_type,
                content_encoding=content_encoding,
                message_id=message_id,
                user_id=None,
            )
        return message_id

    def place(self, body: bytes, headers: dict, message_id: str | None = None) -> str:
        """A place_order as a client may send one: the operator's user, through the events
        exchange."""
        from choreo.messaging.admin import BrokerAdmin

        message_id = message_id or f"probe-{uuid.uuid4().hex}"
        with BrokerAdmin(self.settings) as admin:
            admin.publish_raw("place_order", body, headers, message_id=message_id)
        return message_id

    def letters(self) -> dict:
        """Every dead letter of the domain, by message id (peeked: nothing is consumed)."""
        from choreo.messaging.admin import BrokerAdmin

        with BrokerAdmin(self.settings) as admin:
            return {d.message_id: d for d in admin.peek(self.domain, 100_000) if d.message_id}

    def wait_letters(self, message_ids: list[str], timeout: float = 30) -> dict:
        def arrived():
            found = self.letters()
            return found if all(m in found for m in message_ids) else None

        return wait_for(arrived, timeout, what=f"{message_ids} in the {self.domain} DLQ")


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} ([0-9.e+-]+)$")


def scrape(settings, process: str, index: int = 1) -> dict[tuple, float]:
    """Every labelled sample of a process's /metrics (`index`: which of a domain's workers):
    (name, frozenset(labels)) -> value."""
    import httpx

    out = {}
    for line in httpx.get(
        settings.health_url(process, index) + "/metrics", timeout=5
    ).text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def workers(stack) -> dict:
    """Each domain worker's pid: a test that sends poison checks none of them changed."""
    from config.settings import DOMAINS

    return {d: stack.pid(f"worker-{d}") for d in DOMAINS}


class own_namespace:
    """A namespace of its own in the run's vhost, with the broker users of that namespace
    (choreo-<namespace>-<service>: the run's users keep their grants), set up as `choreo broker
    setup` does; on exit its queues, exchanges and users are deleted."""

    def __init__(self, settings, tag: str, **update) -> None:
        self.settings = settings.model_copy(
            update={"namespace": f"{tag}-{uuid.uuid4().hex[:6]}", **update}
        )

    def __enter__(self):
        from choreo.messaging import access
        from consumers.registry import topology

        access.setup(self.settings, topology(self.settings))
        return self.settings

    def __exit__(self, *exc) -> None:
        from choreo.devtools.sandbox import delete_broker_users
        from choreo.messaging import access
        from choreo.messaging.admin import BrokerAdmin
        from consumers.registry import topology

        topo = topology(self.settings)
        with BrokerAdmin(self.settings, service=None) as admin:
            ch = admin.conn.channel()
            for q in topo.all_queues():
                ch.queue_delete(q.name)
            for x in (
                topo.names.events,
                topo.names.dlx,
                topo.names.retry_exchange,
                topo.names.unrouted,
            ):
                ch.exchange_delete(x)
            ch.close()
        delete_broker_users([access.user_name(self.settings, s) for s in access.SERVICES])


# --- release 0.1's databases (tests/fixtures/release-0.1, by make_release_fixture.py) ---------

RELEASE_0_1 = os.path.join(os.path.dirname(__file__), "fixtures", "release-0.1")


def fresh_databases(settings, tmp_path, tag: str = "db"):
    """Settings on databases of their own: a fresh data folder, and on PostgreSQL a fresh
    database prefix under the run's (the sandbox drops it at the end)."""
    prefix = f"{settings.database_prefix}_{tag}{uuid.uuid4().hex[:6]}"
    return settings.model_copy(update={"data_dir": tmp_path / "data", "database_prefix": prefix})


def load_release_0_1(settings, services=None) -> None:
    """Each service's database as release 0.1 left it: its DDL (for this dialect) and its rows,
    on an empty database, with no alembic_version (release 0.1 had none)."""
    import json

    from sqlalchemy import MetaData

    from choreo.infra.db import engine_for, ensure_database
    from config.settings import SERVICES

    for service in services or SERVICES:
        ensure_database(settings.database_url(service))
        engine = engine_for(settings, service)
        with open(os.path.join(RELEASE_0_1, f"{service}.{engine.dialect.name}.sql")) as f:
            ddl = f.read()
        with open(os.path.join(RELEASE_0_1, f"{service}.json")) as f:
            data = json.load(f)
        with engine.begin() as conn:
            for statement in ddl.split(";\n"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
            tables = MetaData()
            tables.reflect(conn)
            for name, content in data.items():
                _load_rows(conn, tables.tables[name], content)


def _load_rows(conn, table, content: dict) -> None:
    """One table's rows from the fixture (times from ISO text, naive ones as UTC)."""
    from datetime import UTC, datetime

    from sqlalchemy import DateTime, func, select, text

    times = {c.name for c in table.columns if isinstance(c.type, DateTime)}

    def value(column, v):
        if column not in times or v is None:
            return v
        at = datetime.fromisoformat(v)
        return at if at.tzinfo else at.replace(tzinfo=UTC)

    rows = [
        {c: value(c, v) for c, v in zip(content["columns"], row, strict=True)}
        for row in content["rows"]
    ]
    if rows:
        conn.execute(table.insert(), rows)
    if conn.dialect.name != "postgresql":
        return
    for column in table.primary_key.columns:  # a SERIAL's sequence follows the ids loaded
        sequence = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column.name}
        ).scalar()
        top = conn.execute(select(func.max(column))).scalar()
        if sequence and top:
            conn.execute(text("SELECT setval(:s, :v)"), {"s": sequence, "v": top})
