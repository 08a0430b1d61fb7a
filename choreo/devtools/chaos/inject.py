"""What the harness sends: the orders (paced), and duplicates, late and reversed events, poison
and forgeries.

Duplicates, late and reversed events are re-published as the service that owns each (a
service's relay re-publishing, as after a crash): consumers believe no other sender."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter

from pika.exceptions import ChannelClosedByBroker
from sqlmodel import Session, col, select

from choreo.app.queries import order_states
from choreo.devtools.chaos.report import Journal
from choreo.infra.db import engine_for
from choreo.messaging.access import owners, sender_header
from choreo.messaging.admin import BrokerAdmin
from choreo.messaging.topology import Names
from choreo.messaging.wire import celery_message
from choreo.ops.scenarios import make_order
from choreo.ops.workload import AsOwners, publish_orders
from config.settings import DOMAINS, Settings
from consumers.order.messages import OrderPlaced
from consumers.order.rules import TERMINAL
from consumers.payment.messages import PaymentCompleted
from models.envelope import Envelope, make_envelope
from models.tables import Outbox


class Injector:
    """Re-publishes real envelopes from the services' outboxes (same event ids), and poison."""

    def __init__(
        self, settings: Settings, rng: random.Random, journal: Journal, per_burst: int
    ) -> None:
        self.settings = settings
        self.rng = rng
        self.journal = journal
        self.per_burst = per_burst
        self.owners = AsOwners(settings, "chaos")
        self.counts: Counter = Counter()

    def close(self) -> None:
        self.owners.close()

    def _outbox(self) -> list[tuple]:
        """(domain, row id, order id, type, created_at) of every committed event, sent or not."""
        rows = []
        for d in DOMAINS:
            with Session(engine_for(self.settings, d)) as s:
                rows += [
                    (d, *r)
                    for r in s.exec(
                        select(Outbox.id, Outbox.order_id, Outbox.type, Outbox.created_at)
                    )
                ]
        return rows

    def _bodies(self, picked: list[tuple]) -> list:
        out = []
        for d in DOMAINS:
            ids = [r[1] for r in picked if r[0] == d]
            if ids:
                with Session(engine_for(self.settings, d)) as s:
                    bodies = dict(
                        s.exec(select(Outbox.id, Outbox.body).where(col(Outbox.id).in_(ids))).all()
                    )
                out += [
                    (r, Envelope.model_validate_json(bodies[r[1]])) for r in picked if r[0] == d
                ]
        # Keep the order the caller chose (reversed timelines depend on it).
        rank = {r: i for i, r in enumerate(picked)}
        return [env for r, env in sorted(out, key=lambda p: rank[p[0]])]

    def _publish(self, kind: str, envelopes: list) -> None:
        for env in envelopes:
            self.owners.publish(env)
        self.counts[kind] += len(envelopes)

    def burst(self) -> None:
        rows = self._outbox()
        if not rows:
            return
        states = order_states(self.settings)
        # Plain duplicates: any committed event again, same event id.
        dups = self.rng.sample(rows, min(self.per_burst, len(rows)))
        self._publish("duplicate", self._bodies(dups))
        by_order: dict[str, list[tuple]] = {}
        for r in rows:
            by_order.setdefault(r[2], []).append(r)
        ended = sorted(o for o, (st, _) in states.items() if st in TERMINAL and o in by_order)
        moving = sorted(o for o, (st, _) in states.items() if st not in TERMINAL and o in by_order)
        # Late: an order's first facts (order.placed, payment.*) arrive after the order ended.
        late, late_orders = [], self.rng.sample(ended, min(max(1, self.per_burst // 4), len(ended)))
        for o in late_orders:
            late += sorted(by_order[o], key=lambda r: r[4])[:2]
        self._publish("late", self._bodies(late))
        # Reversed: an in-flight order's whole timeline so far, newest first, possibly before
        # the original of its newest event was published (an outbox row not yet sent).
        rev, rev_orders = [], self.rng.sample(moving, min(max(1, self.per_burst // 8), len(moving)))
        for o in rev_orders:
            rev += sorted(by_order[o], key=lambda r: r[4], reverse=True)
        self._publish("reversed", self._bodies(rev))
        self.journal.note(
            "inject",
            f"{len(dups)} duplicates; {len(late)} late events of {len(late_orders)} ended "
            f"orders; {len(rev)} events of {len(rev_orders)} in-flight orders, newest first",
            style="cyan",
            duplicates=len(dups),
            late=len(late),
            reversed=len(rev),
        )

    def poison(self) -> None:
        """One of each kind; none names an audited order, so none can make an order
        NEEDS_ATTENTION."""
        ns = self.settings.namespace
        good = make_envelope(
            "order.placed",
            f"chaos-poison-{uuid.uuid4().hex[:8]}",
            OrderPlaced(order=_order_snapshot(self.rng), card_token="tok_visa"),
            source="chaos",
        ).to_wire()
        good["payload"]["order"]["items"][0]["qty"] = 0
        cases = {
            # (routing key, exchange or None for the events exchange, body, headers)
            "not_json": (
                "inventory.reserved",
                None,
                b"{chaos: not json",
                celery_message("inventory.reserved", [], str(uuid.uuid4()))[1],
            ),
            "unknown_type": (
                f"{ns}.inventory",
                "",
                *celery_message("inventory.exploded", [good], str(uuid.uuid4())),
            ),
            "schema_invalid": (
                "order.placed",
                None,
                *celery_message("order.placed", [good], str(uuid.uuid4())),
            ),
            # Shapes that crashed Celery's own request handling before the protocol guard.
            "wrong_shape": (
                "order.placed",
                None,
                json.dumps([[good], {}]).encode(),
                celery_message("order.placed", [], str(uuid.uuid4()))[1],
            ),
            "no_id_header": (
                "order.placed",
                None,
                celery_message("order.placed", [good], str(uuid.uuid4()))[0],
                {"task": "order.placed", "lang": "py"},
            ),
            "oversized": (
                "order.placed",
                None,
                b"[" + b" " * (self.settings.max_message_bytes + 1) + b"]",
                celery_message("order.placed", [], str(uuid.uuid4()))[1],
            ),
        }
        # Each as the service that owns its routing key (a buggy service: the broker lets it say
        # its own types); straight to a queue as the bootstrap user (no service may do that).
        for kind, (rk, exchange, body, headers) in cases.items():
            with BrokerAdmin(
                self.settings, service=None if exchange == "" else min(owners(rk))
            ) as admin:
                admin.publish_raw(rk, body, headers, exchange=exchange)
            self.counts[f"poison:{kind}"] += 1
        self.forge()
        self.journal.note(
            "inject",
            f"poison: {', '.join(cases)}; forged payment.completed twice, "
            "an order.placed retry copy",
            style="cyan",
        )

    def forge(self) -> None:
        """A payment.completed for an order never placed: with the operator's credentials (the
        broker refuses it), and with no verified sender straight into the inventory queue (it
        is dead-lettered). Neither may reserve stock or ship: the audit's unknown-order checks."""
        env = make_envelope(
            "payment.completed",
            f"chaos-forged-{uuid.uuid4().hex[:8]}",
            PaymentCompleted(
                charge_id=f"ch-forged-{uuid.uuid4().hex[:6]}",
                amount_cents=100,
                order=_order_snapshot(self.rng),
            ),
            source="payment",
        )
        body, headers = celery_message("payment.completed", [env.to_wire()], env.event_id)
        try:
            with BrokerAdmin(self.settings) as admin:
                admin.publish_raw("payment.completed", body, headers)
            self.counts["forged:accepted_by_broker"] += 1  # the audit will say what it did
        except ChannelClosedByBroker as exc:
            self.counts[
                "forged:refused_by_broker" if exc.reply_code == 403 else "forged:failed"
            ] += 1
        with BrokerAdmin(self.settings, service=None) as admin:
            admin.publish_raw(
                f"{self.settings.namespace}.inventory", body, headers, exchange="", user_id=None
            )
        self.counts["forged:unverified"] += 1
        self.forge_copy()

    def forge_copy(self) -> None:
        """An order.placed for an order never placed, with the payment user's password, on the
        payment service's own first retry rung, naming the order service as its sender: a copy
        the payment service never made (no record of it), so it must charge nothing."""
        placed = make_envelope(
            "order.placed",
            f"chaos-forged-{uuid.uuid4().hex[:8]}",
            OrderPlaced(order=_order_snapshot(self.rng), card_token="tok_visa"),
            source="order",
        )
        body, headers = celery_message("order.placed", [placed.to_wire()], placed.event_id)
        headers.update({"choreo_attempt": 1, **sender_header("order")})
        names = Names(self.settings.namespace)
        with BrokerAdmin(self.settings, service="payment") as admin:
            admin.publish_raw(
                names.retry_key("payment", 1), body, headers, exchange=names.retry_exchange
            )
        self.counts["forged:copy"] += 1


class OrderFeed(threading.Thread):
    """Publishes the orders at a steady pace over `window` seconds, in chunks
    (partial results survive).

    A chunk whose publishing fails (the client's own connection lost to a broker node stopping,
    after the publisher's retry policy) is published again, as a careful client would, up to
    CHUNK_ATTEMPTS times: the same seed gives the same order ids, and placing an order id twice is
    a no-op. Each retry is kept in `retries` (the report shows them); a chunk that fails every
    attempt ends the feed with `error`."""

    CHUNK_ATTEMPTS = 3

    def __init__(
        self, settings: Settings, scenarios: list[str], window: float, rng: random.Random
    ) -> None:
        super().__init__(name="chaos-orders", daemon=True)
        self.settings = settings
        self.scenarios = scenarios
        self.window = window
        self.seeds = [rng.getrandbits(64) for _ in range(len(scenarios))]
        self.sent: list[tuple[str, str]] = []
        self.published = 0
        self.retries: list[str] = []
        self.error: str | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        n = len(self.scenarios)
        per_order = self.window / n
        chunk = max(1, -(-n // 20))
        t0 = time.monotonic()
        paced_count = 0

        def paced():
            nonlocal paced_count
            paced_count += 1
            lag = t0 + paced_count * per_order - time.monotonic()
            if lag > 0:
                self.stop_event.wait(lag)

        for i in range(0, n, chunk):
            if self.stop_event.is_set():
                break
            if not self._chunk(self.scenarios[i : i + chunk], self.seeds[i], paced):
                return
            self.published = len(self.sent)

    def _chunk(self, scenarios: list[str], seed: int, paced) -> bool:
        """Publish one chunk (a fresh seed per chunk: publish_orders derives order ids from it)."""
        for attempt in range(1, self.CHUNK_ATTEMPTS + 1):
            try:
                self.sent += publish_orders(
                    self.settings, scenarios, seed, on_sent=paced, source="chaos"
                )
                return True
            except Exception as exc:  # the client's connection: try the chunk again
                self.retries.append(f"attempt {attempt}: {exc!r}")
                if attempt == self.CHUNK_ATTEMPTS or self.stop_event.wait(2.0):
                    n = len(self.scenarios)
                    self.error = f"publishing failed after {len(self.sent)} of {n} orders: {exc!r}"
                    return False
        raise AssertionError("unreachable: the last attempt returns")


def _order_snapshot(rng: random.Random) -> dict:
    """An order as a fact carries it (items, address, amount) for an order no audit counts."""
    spec = make_order("completed", rng)
    return {
        "customer_id": spec.customer_id,
        "items": spec.items,
        "address": spec.address,
        "amount_cents": 100,
    }
