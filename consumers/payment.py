"""Payment service handlers: charge on order.placed; refund (compensation) on stock or shipment failure."""

from __future__ import annotations

from choreo.domain.payment import Declined, refund_amount
from choreo.infra.db import Rows
from consumers.base import Subscription
from models.envelope import Envelope
from models.tables import Charge, PaymentDecision, Refund

DECISIONS, CHARGES = Rows(PaymentDecision), Rows(Charge)


def on_order_placed(msg: Envelope, uow, deps) -> None:
    db = uow.conn
    if DECISIONS.exists(db, msg.order_id):
        return  # decided before (a new event id for an old order): say nothing twice
    p = msg.parsed()
    try:
        charge_id = deps.gateway.charge(msg.order_id, p.order.amount_cents, p.card_token)
    except Declined as exc:
        DECISIONS.add(db, order_id=msg.order_id, outcome="declined", reason=exc.reason)
        uow.emit("payment.failed", {"reason": exc.reason, "code": exc.code})
        return
    DECISIONS.add(db, order_id=msg.order_id, outcome="charged")
    CHARGES.add(
        db,
        order_id=msg.order_id,
        charge_id=charge_id,
        amount_cents=p.order.amount_cents,
        card_token=p.card_token,
    )
    uow.emit(
        "payment.completed",
        {
            "charge_id": charge_id,
            "amount_cents": p.order.amount_cents,
            "order": p.order.model_dump(),
        },
    )


def on_failure_refund(msg: Envelope, uow, deps) -> None:
    """Compensation: give back exactly what was charged, once, whatever asked for it."""
    s = uow.session
    if s.get(Refund, msg.order_id):
        return
    charge = s.get(Charge, msg.order_id)
    amount = refund_amount(charge.amount_cents if charge else None)
    refund_id = deps.gateway.refund(msg.order_id, amount, charge.card_token) if amount else None
    reason = msg.payload.get("reason", msg.type)
    s.add(Refund(order_id=msg.order_id, refund_id=refund_id, amount_cents=amount, reason=reason))
    uow.emit("payment.refunded", {"refund_id": refund_id, "amount_cents": amount, "reason": reason})


SUBSCRIPTIONS = {
    "order.placed": Subscription(on_order_placed),
    "inventory.failed": Subscription(on_failure_refund, compensation=True),
    "shipment.failed": Subscription(on_failure_refund, compensation=True),
}
