"""A stolen service password cannot make a service act on a copy it did not make: for every domain
user, a fact of a type it does not own, published where that user may write (each rung of its own
retry ladder, its own dead-letter key), with and without the `x-choreo-sender` claim of the real
owner; then the operator replays whatever reached a DLQ. Nothing happens: no charge at the gateway,
no reservation, shipment, notification, order or inbox row, stock unchanged, the audit clean of it.
Against the real broker and the running stack."""

from __future__ import annotations

import uuid

import pytest
from sqlmodel import Session, select

from choreo.messaging.wire import dead_letter_headers
from tests.helpers import celery_message, queues_idle, wait_for

pytestmark = pytest.mark.e2e

# What each domain's user forges: a type its domain hears and another service owns.
FORGE = {
    "order": "payment.completed",
    "payment": "order.placed",
    "inventory": "payment.completed",
    "shipment": "inventory.reserved",
    "notification": "order.completed",
}


def _payload(type_: str):
    from choreo.ops.scenarios import make_order
    from consumers.inventory.messages import InventoryReserved
    from consumers.order.messages import OrderCompleted, OrderPlaced
    from consumers.payment.messages import PaymentCompleted
    from models.envelope import OrderSnapshot

    spec = make_order("completed")
    amount = sum(i["qty"] * i["unit_price_cents"] for i in spec.items)
    order = OrderSnapshot(
        customer_id=spec.customer_id, address=spec.address, amount_cents=amount, items=spec.items
    )
    return {
        "order.placed": lambda: OrderPlaced(order=order, card_token=spec.card_token),
        "payment.completed": lambda: PaymentCompleted(
            charge_id="ch-forged", amount_cents=amount, order=order
        ),
        "inventory.reserved": lambda: InventoryReserved(reservation_id="r-forged", order=order),
        "order.completed": lambda: OrderCompleted(
            customer_id=spec.customer_id, amount_cents=amount
        ),
    }[type_]()


class Forgery:
    def __init__(self, settings, domain: str, rung: int | None, claim: bool) -> None:
        from choreo.messaging.access import owners
        from models.envelope import make_envelope

        self.domain, self.rung, self.claim = domain, rung, claim
        self.type = FORGE[domain]
        self.order_id = (
            f"ord-forged-{domain[:3]}-{rung or 'dlq'}-{int(claim)}-{uuid.uuid4().hex[:6]}"
        )
        owner = min(owners(self.type))
        env = make_envelope(self.type, self.order_id, _payload(self.type), source=owner)
        self.event_id = env.event_id
        self.body, self.headers = celery_message(self.type, [env.to_wire()], env.event_id)
        if rung is None:  # as the domain's own dead-letter copies look
            self.headers.update(
                dead_letter_headers("failed after 4 attempts: RuntimeError()", domain, 4, False)
            )
        else:
            self.headers.update(choreo_attempt=rung, choreo_last_error="RuntimeError()")
        if claim:
            self.headers["x-choreo-sender"] = owner
        ns = settings.namespace
        self.exchange, self.key = (
            (f"{ns}.dlx", domain) if rung is None else (f"{ns}.retry", f"{domain}.{rung}")
        )

    def publish(self, settings) -> None:
        from choreo.messaging.admin import BrokerAdmin

        with BrokerAdmin(settings, service=self.domain) as admin:  # the stolen password
            admin.publish_raw(self.key, self.body, self.headers, exchange=self.exchange)

    def __repr__(self) -> str:
        return f"{self.type} by {self.domain} via {self.exchange}/{self.key} claim={self.claim}"


def _rows(settings, order_ids: set[str]) -> dict[str, list[str]]:
    """Every row of any service that names one of these orders: table -> order ids."""
    from choreo.infra.db import engine_for
    from consumers.inventory.tables import Reservation
    from consumers.notification.tables import Notification
    from consumers.order.tables import OrderEvent, OrderView
    from consumers.payment.tables import Charge, Refund
    from consumers.shipment.tables import Shipment
    from models.tables import GatewayLedger, Inbox

    where = {
        "order": [OrderView, OrderEvent, Inbox],
        "payment": [Charge, Refund, Inbox],
        "gateway": [GatewayLedger],
        "inventory": [Reservation, Inbox],
        "shipment": [Shipment, Inbox],
        "notification": [Notification, Inbox],
    }
    found: dict[str, list[str]] = {}
    for service, models in where.items():
        with Session(engine_for(settings, service)) as s:
            for model in models:
                hits = s.exec(select(model.order_id).where(model.order_id.in_(order_ids))).all()
                if hits:
                    found[f"{service}.{model.__tablename__}"] = sorted(hits)
    return found


def _stock(settings) -> dict:
    from choreo.infra.db import engine_for
    from consumers.inventory.tables import Stock

    with Session(engine_for(settings, "inventory")) as s:
        return {r.sku: (r.available, r.reserved) for r in s.exec(select(Stock))}


def _dead_letters(settings) -> dict[str, dict]:
    """event id -> its dead letter (domain, reason, attempts), over every domain's DLQ."""
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(settings) as admin:
        return {
            v.event_id: {"domain": d, "reason": v.reason, "attempts": v.attempts}
            for d in settings.domains
            for v in admin.peek(d, 10_000)
        }


def test_a_forged_copy_on_any_rung_or_dead_letter_key_changes_nothing_even_replayed(
    settings, stack
):
    from choreo.ops import replay as rp
    from choreo.ops.audit import run_audit

    rungs = [*range(1, settings.retry_max_attempts + 1), None]
    forgeries = [
        Forgery(settings, d, r, claim)
        for d in FORGE
        if d in settings.domains
        for r in rungs
        for claim in (False, True)
    ]
    assert len(forgeries) == 2 * len(rungs) * len(settings.domains)
    queues_idle(settings)
    stock = _stock(settings)
    for f in forgeries:
        f.publish(settings)

    ids = {f.event_id: f for f in forgeries}
    orders = {f.order_id for f in forgeries}
    # Each ends in its domain's DLQ, refused: what took a rung reached the queue and was
    # dead-lettered.
    try:
        wait_for(
            lambda: ids.keys() <= _dead_letters(settings).keys(), 30, what="every forgery in a DLQ"
        )
    finally:
        queues_idle(settings)
        assert _rows(settings, orders) == {}
    lettered = _dead_letters(settings)
    taken_in = [
        ids[e]
        for e in ids
        if lettered[e]["domain"] != ids[e].domain
        or (
            ids[e].rung is not None and not lettered[e]["reason"].startswith("poison: unauthorized")
        )
    ]
    assert taken_in == []

    # The operator replays every one of them: the broker moves each back to its queue, still
    # refused.
    for domain in settings.domains:
        mine = [e for e, f in ids.items() if f.domain == domain]
        run = rp.execute(settings, domain, mine, by="test")
        # A set: a dead letter may sit in its DLQ twice (at least once: a worker whose ack was
        # lost dead-letters the redelivery again); each copy is replayed and refused again.
        assert {r.event_id for r in run.records} == set(mine)
    again = wait_for(
        lambda: (
            (d := _dead_letters(settings))
            and all(
                eid in d
                and d[eid]["reason"].startswith("poison: unauthorized")
                and d[eid]["attempts"] == 1
                for eid in ids
            )
            and d
        ),
        60,
        what="every replayed forgery dead-lettered again, unauthorized",
    )
    queues_idle(settings)
    assert {eid: again[eid]["domain"] for eid in ids} == {eid: f.domain for eid, f in ids.items()}

    assert _rows(settings, orders) == {}
    assert _stock(settings) == stock
    checks = run_audit(settings)
    assert not [
        c.name
        for c in checks
        if orders & set(c.problems) or any(o in p for o in orders for p in c.problems.values())
    ]
