"""Handler test harness: one domain's handlers through the real adapter path, on a real SQLite
unit of work, with fakes.

In the spirit of nameko's worker_factory:
`Harness("payment", tmp_path).deliver("order.placed", ...)` runs `tasks.adapter.process_batch`
exactly as a worker does with the deliveries it holds (decode, idempotency, lookup, one
transaction with a savepoint each, publish burst, mark sent), but the broker, Redis, the payment
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
from choreo.infra.db import dispose_engines, engine_for
from choreo.messaging.access import owners
from choreo.messaging.topology import Names
from config.catalog import CARD_DECLINED, PRICES_CENTS
from config.settings import SERVICES, Settings
from consumers.payment.rules import Declined, TransientError
from consumers.registry import subscriptions
from models.envelope import Envelope, decode, make_envelope
from tasks.adapter import Delivery, Outcome, process_batch
from tasks.runtime import Runtime


class RecordingBurst:
    """Stands in for choreo.messaging.publisher.ConfirmedBurst: keeps what would have gone to the
    broker, and confirms everything unless a key is listed in `refuse` (a nack)."""

    def __init__(self, events_exchange: str) -> None:
        self.events_exchange = events_exchange
        self.published: list[Envelope] = []  # events
        self.sent: list[dict] = []  # retry and dead-letter copies
        self.refuse: set[int] = set()

    def run(self, messages: list[tuple[Any, dict]], before_each=None) -> set:
        for key, m in messages:
            if key in self.refuse:
                continue
            if m.get("exchange") == self.events_exchange:
                self.published.append(Envelope.model_validate(m["args"][0]))
            else:
                self.sent.append(m)
        return {key for key, _ in messages if key in self.refuse}


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def incr(self, name: str, domain: str, by: int = 1) -> None:
        self.counts[(name, domain)] += by


class FakeIdempotency:
    """In-memory Redis idempotency keys. Like the real one, `counts` bump those metrics too."""

    def __init__(self, metrics: FakeMetrics) -> None:
        self.keys: set[tuple[str, str]] = set()
        self.metrics = metrics

    def seen(self, consumer: str, event_ids: list[str]) -> list[bool]:
        return [(consumer, e) in self.keys for e in event_ids]

    def remember(
        self, consumer: str, event_ids: list[str], counts: dict[str, int] | None = None
    ) -> None:
        self.keys.update((consumer, e) for e in event_ids)
        for name, n in (counts or {}).items():
            if n:
                self.metrics.incr(name, consumer, n)


class FakeGateway:
    """The payment provider: records every call; honours idempotency keys as the sandbox does
    (choreo.world.gateway), so a re-run of the same charge returns the same reference."""

    def __init__(
        self,
        declined_cards: set[str] | frozenset[str] = frozenset({CARD_DECLINED}),
        refunds_fail: bool = False,
    ) -> None:
        self.declined_cards = set(declined_cards)
        self.refunds_fail = refunds_fail
        self.charges: list[
            tuple[str, int, str]
        ] = []  # (order_id, amount_cents, card_token), every call
        self.refunds: list[tuple[str, int, str]] = []
        self.ledger: dict[
            str, tuple[str, int]
        ] = {}  # idempotency key -> (reference, cents): money that moved

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
        return {
            kind: self.ledger.get(f"{kind}:{order_id}", ("", 0))[1] for kind in ("charge", "refund")
        }


class FakeUsers:
    """The user service client: a dict of customers. `probe`, if given, runs on each call and
    its result is recorded, so a test can observe what was true at the moment of the call."""

    def __init__(self, customers: dict[str, dict] | None = None, probe=None) -> None:
        self.customers = (
            customers
            if customers is not None
            else {"cust-1": {"id": "cust-1", "name": "Ada Lovelace", "email": "ada@example.com"}}
        )
        self.probe = probe
        self.calls: list[tuple[str, Any]] = []
        self.request_ids: list[str | None] = []

    def get(self, customer_id: str, request_id: str | None = None) -> dict | None:
        self.calls.append((customer_id, self.probe() if self.probe else None))
        self.request_ids.append(request_id)
        return self.customers.get(customer_id)


class FakeDeps:
    def __init__(
        self, gateway: FakeGateway | None = None, users: FakeUsers | None = None, catalog=None
    ) -> None:
        self.gateway = gateway or FakeGateway()
        self.users = users or FakeUsers()
        self.catalog = catalog if catalog is not None else PRICES_CENTS


class Published(list):
    """What one delivery published, in order; `outcome` is the adapter's own answer."""

    outcome: Outcome

    @property
    def types(self) -> list[str]:
        return [e.type for e in self]

    def one(self, type_: str) -> Envelope:
        found = [e for e in self if e.type == type_]
        assert len(found) == 1, f"expected one {type_}, published {self.types}"
        return found[0]


class Harness:
    """One domain's worker minus the broker: real settings, tables, engine, adapter and handlers."""

    def __init__(
        self,
        domain: str,
        tmp_path: Path,
        mode: str = "choreography",
        deps: FakeDeps | None = None,
        **overrides: Any,
    ) -> None:
        """`overrides`: further settings (a test's own skew, retry ladder, ...)."""
        self.domain = domain
        self.tmp_path = Path(tmp_path).resolve()
        # Every database URL pinned to the temporary folder, whatever CHOREO_* the environment sets
        # (tests/conftest.py may point the suite at a PostgreSQL server).
        self.settings = Settings(
            data_dir=self.tmp_path,
            run_dir=self.tmp_path,
            database_server="",
            saga_mode=mode,
            **{f"{s}_database_url": "" for s in SERVICES},
            **overrides,
        )
        self.subscriptions = subscriptions(mode)[domain]
        prepare(self.settings, [domain])
        names = Names(self.settings.namespace)
        self.burst = RecordingBurst(names.events)
        self.metrics = FakeMetrics()
        self.idempotency = FakeIdempotency(self.metrics)
        self.deps = deps or FakeDeps()
        self.engine = engine_for(self.settings, domain)
        self.rt = Runtime(
            settings=self.settings,
            domain=domain,
            engine=self.engine,
            names=names,
            burst=self.burst,
            idempotency=self.idempotency,
            deps=self.deps,
        )

    @property
    def gateway(self) -> FakeGateway:
        return self.deps.gateway

    @property
    def users(self) -> FakeUsers:
        return self.deps.users

    def envelope(
        self, type_: str, order_id: str, payload: dict, event_id: str | None = None
    ) -> Envelope:
        env = make_envelope(type_, order_id, payload, source="test", event_id=event_id)
        # Through the wire and back, as tasks.adapter does: the handler sees the schema's
        # rendering of the payload, not the dict the test wrote.
        return decode(env.to_wire())

    def deliver(
        self, type_: str, order_id: str, payload: dict, event_id: str | None = None
    ) -> Published:
        """Run this domain's subscription for `type_` on one message; returns what it published."""
        return self.deliver_envelope(self.envelope(type_, order_id, payload, event_id))

    def deliver_envelope(self, envelope: Envelope, attempt: int = 0) -> Published:
        """One delivery, a batch of one, as a worker holding a single message runs it."""
        return self.deliver_batch([envelope], attempt)[0]

    def deliver_batch(
        self, envelopes: list[Envelope | Delivery], attempt: int = 0
    ) -> list[Published]:
        """One batch, as a worker holding these deliveries runs it; what each one published."""
        # Sent by the type's owner, as the broker would vouch for a real delivery (tasks.worker).
        deliveries = [
            e
            if isinstance(e, Delivery)
            else Delivery(
                e.type, [e.to_wire()], {}, e.event_id, attempt=attempt, sender=min(owners(e.type))
            )
            for e in envelopes
        ]
        before = len(self.burst.published)
        outcomes = process_batch(self.rt, deliveries)
        published = self.burst.published[before:]
        out = []
        for d, outcome in zip(deliveries, outcomes, strict=True):  # one outcome per delivery
            mine = Published(e for e in published if e.causation_id == d.task_id)
            mine.outcome = outcome
            out.append(mine)
        return out

    @staticmethod
    def returned(copy: dict, replayed: bool = False) -> Delivery:
        """A retry or dead-letter copy this domain published, coming back to it as the worker
        reads it (tasks.worker._delivery): its own user_id, so no sender, only the claim it
        names."""
        claim = copy["headers"]["x-choreo-sender"]
        return Delivery(
            copy["name"],
            copy["args"],
            copy["kwargs"],
            copy["task_id"],
            attempt=0 if replayed else copy["headers"].get("choreo_attempt", 0),
            sender=None,
            claim=None if claim == "-" else claim,
        )

    def rows(self, model) -> list:
        with Session(self.engine) as s:
            return list(s.exec(select(model)).all())

    def row(self, model, *pk):
        with Session(self.engine) as s:
            return s.get(model, pk[0] if len(pk) == 1 else pk)

    def write_lock_free(self) -> bool:
        """Whether another writer could start now, i.e. no unit of work holds the database's write
        lock (the adapter's transactions begin IMMEDIATE). Own connection, no waiting."""
        conn = sqlite3.connect(
            make_url(self.settings.database_url(self.domain)).database,
            timeout=0,
            isolation_level=None,
        )
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

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
