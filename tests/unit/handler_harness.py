"""Handler test harness: one domain's handlers through the real adapter path, on a real SQLite unit of work, with fakes.

In the spirit of nameko's worker_factory: `Harness("payment", tmp_path).deliver("order.placed", ...)`
runs `tasks.adapter.process` exactly as a worker would after decoding a delivery (lookup, unit
of work, inbox, outbox, publish after commit, mark sent), but the broker, Redis, the payment
gateway and the user service are in-memory fakes. No processes, no network: milliseconds.
"""
from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from choreo.app.bootstrap import prepare
from choreo.domain.payment import Declined, TransientError
from choreo.infra.db import dispose_engines, engine_for
from choreo.messaging.topology import Names
from config.catalog import CARD_DECLINED, PRICES_CENTS
from config.settings import SERVICES, Settings
from consumers.registry import subscriptions
from models.envelope import Envelope, decode, make_envelope
from tasks.adapter import process
from tasks.runtime import Runtime


class RecordingPublisher:
    """Stands in for choreo.messaging.publisher.Publisher: keeps what would have gone to the broker."""

    def __init__(self) -> None:
        self.published: list[Envelope] = []
        self.sent: list[dict] = []

    def publish(self, envelope: Envelope) -> None:
        self.published.append(envelope)

    def send(self, name: str, args: Any, kwargs: Any, **options) -> None:
        # Only the retry ladder and the DLQ call this (tasks.adapter.handle); process() never does.
        self.sent.append({"name": name, "args": args, "kwargs": kwargs, **options})


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def incr(self, name: str, domain: str, by: int = 1) -> None:
        self.counts[(name, domain)] += by


class FakeIdempotency:
    """In-memory Redis idempotency keys. Like the real one, `count` bumps that metric too."""

    def __init__(self, metrics: FakeMetrics) -> None:
        self.keys: set[tuple[str, str]] = set()
        self.metrics = metrics

    def seen(self, consumer: str, event_id: str) -> bool:
        return (consumer, event_id) in self.keys

    def remember(self, consumer: str, event_id: str, count: str | None = None) -> None:
        self.keys.add((consumer, event_id))
        if count:
            self.metrics.incr(count, consumer)


class FakeGateway:
    """The payment provider: records every call; honours idempotency keys as the sandbox does
    (choreo.world.gateway), so a re-run of the same charge returns the same reference."""

    def __init__(self, declined_cards: set[str] | frozenset[str] = frozenset({CARD_DECLINED}),
                 refunds_fail: bool = False) -> None:
        self.declined_cards = set(declined_cards)
        self.refunds_fail = refunds_fail
        self.charges: list[tuple[str, int, str]] = []  # (order_id, amount_cents, card_token), every call
        self.refunds: list[tuple[str, int, str]] = []
        self.ledger: dict[str, tuple[str, int]] = {}  # idempotency key -> (reference, cents): money that moved

    def _move(self, key: str, amount_cents: int, prefix: str) -> str:
        return self.ledger.setdefault(key, (f"{prefix}_{uuid.uuid4().hex[:16]}", amount_cents))[0]

    def charge(self, order_id: str, amount_cents: int, card_token: str) -> str:
        self.charges.append((order_id, amount_cents, card_token))
        if card_token in self.declined_cards:
            raise Declined("card_declined")
        return self._move(f"charge:{order_id}", amount_cents, "ch")

    def refund(self, order_id: str, amount_cents: int, card_token: str) -> str:
        self.refunds.append((order_id, amount_cents, card_token))
        if self.refunds_fail:
            raise TransientError("gateway refused refund: processor unavailable (fake)")
        return self._move(f"refund:{order_id}", amount_cents, "re")

    def moved(self, order_id: str) -> dict[str, int]:
        """Cents that actually moved for an order, per kind (a call that raised moved nothing)."""
        return {kind: self.ledger.get(f"{kind}:{order_id}", ("", 0))[1] for kind in ("charge", "refund")}


class FakeUsers:
    """The user service client: a dict of customers. `probe`, if given, runs on each call and
    its result is recorded, so a test can observe what was true at the moment of the call."""

    def __init__(self, customers: dict[str, dict] | None = None, probe=None) -> None:
        self.customers = customers if customers is not None else {
            "cust-1": {"id": "cust-1", "name": "Ada Lovelace", "email": "ada@example.com"}}
        self.probe = probe
        self.calls: list[tuple[str, Any]] = []

    def get(self, customer_id: str) -> dict | None:
        self.calls.append((customer_id, self.probe() if self.probe else None))
        return self.customers.get(customer_id)


class FakeDeps:
    def __init__(self, gateway: FakeGateway | None = None, users: FakeUsers | None = None, catalog=None) -> None:
        self.gateway = gateway or FakeGateway()
        self.users = users or FakeUsers()
        self.catalog = catalog if catalog is not None else PRICES_CENTS


class Published(list):
    """What one delivery published, in order; `outcome` is process()'s own answer."""
    outcome: dict

    @property
    def types(self) -> list[str]:
        return [e.type for e in self]

    def one(self, type_: str) -> Envelope:
        found = [e for e in self if e.type == type_]
        assert len(found) == 1, f"expected one {type_}, published {self.types}"
        return found[0]


class Harness:
    """One domain's worker minus the broker: real settings, tables, engine, adapter and handlers."""

    def __init__(self, domain: str, tmp_path: Path, mode: str = "choreography", deps: FakeDeps | None = None) -> None:
        self.domain = domain
        self.tmp_path = Path(tmp_path).resolve()
        # Every database URL pinned to the temporary folder, whatever CHOREO_* the environment sets
        # (tests/conftest.py may point the suite at a PostgreSQL server).
        self.settings = Settings(data_dir=self.tmp_path, run_dir=self.tmp_path, database_server="", saga_mode=mode,
                                 **{f"{s}_database_url": "" for s in SERVICES})
        self.subscriptions = subscriptions(mode)[domain]
        prepare(self.settings, [domain])
        self.publisher = RecordingPublisher()
        self.metrics = FakeMetrics()
        self.idempotency = FakeIdempotency(self.metrics)
        self.deps = deps or FakeDeps()
        self.engine = engine_for(self.settings, domain)
        self.rt = Runtime(settings=self.settings, domain=domain, engine=self.engine,
                          names=Names(self.settings.namespace), publisher=self.publisher,
                          idempotency=self.idempotency, deps=self.deps, metrics=self.metrics)

    @property
    def gateway(self) -> FakeGateway:
        return self.deps.gateway

    @property
    def users(self) -> FakeUsers:
        return self.deps.users

    def envelope(self, type_: str, order_id: str, payload: dict, event_id: str | None = None) -> Envelope:
        env = make_envelope(type_, order_id, payload, source="test", event_id=event_id)
        # Through the wire and back, as tasks.adapter.handle does: the handler sees the schema's
        # rendering of the payload, not the dict the test wrote.
        return decode(env.to_wire())

    def deliver(self, type_: str, order_id: str, payload: dict, event_id: str | None = None) -> Published:
        """Run this domain's subscription for `type_` on one message; returns what it published."""
        return self.deliver_envelope(self.envelope(type_, order_id, payload, event_id))

    def deliver_envelope(self, envelope: Envelope) -> Published:
        before = len(self.publisher.published)
        outcome = process(self.rt, self.subscriptions[envelope.type], envelope)
        out = Published(self.publisher.published[before:])
        out.outcome = outcome
        return out

    def rows(self, model) -> list:
        with Session(self.engine) as s:
            return list(s.exec(select(model)).all())

    def row(self, model, *pk):
        with Session(self.engine) as s:
            return s.get(model, pk[0] if len(pk) == 1 else pk)

    def write_lock_free(self) -> bool:
        """Whether another writer could start now, i.e. no unit of work holds the database's write
        lock (the adapter's transactions begin IMMEDIATE). Own connection, no waiting."""
        conn = sqlite3.connect(make_url(self.settings.database_url(self.domain)).database, timeout=0,
                               isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()

    def close(self) -> None:
        dispose_engines(str(self.tmp_path))

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
