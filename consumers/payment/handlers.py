"""Payment service handlers: charge on order.placed; refund (a compensation) on a stock or
shipment failure, or the order's expiry."""

from __future__ import annotations

from choreo.app.uow import UnitOfWork
from choreo.infra.db import Rows
from consumers.base import HandlerDeps, Subscription, Subscriptions
from consumers.inventory.messages import InventoryFailed
from consumers.orchestrator.messages import ChargePayment, RefundPayment
from consumers.order.messages import OrderExpired, OrderPlaced
from consumers.payment.messages import PaymentCompleted, PaymentFailed, PaymentRefunded
from consumers.payment.rules import Declined, refund_amount
from consumers.payment.tables import Charge, PaymentDecision, Refund
from consumers.shipment.messages import ShipmentFailed
from models.envelope import Envelope

DECISIONS, CHARGES = Rows(PaymentDecision), Rows(Charge)


def on_order_placed(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    """Charge the order (order.placed; charge_payment in the orchestrated mode: same facts)."""
    db = uow.conn
    if DECISIONS.exists(db, msg.order_id):
        return  # decided before (a new event id for an old order): say nothing twice
    p = msg.parsed((OrderPlaced, ChargePayment))
    try:
        charge_id = deps.gateway.charge(msg.order_id, p.order.amount_cents, p.card_token)
    except Declined as exc:
        DECISIONS.add(db, order_id=msg.order_id, outcome="declined", reason=exc.reason)
        uow.emit(PaymentFailed(reason=exc.reason, code=exc.code))
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
        PaymentCompleted(charge_id=charge_id, amount_cents=p.order.amount_cents, order=p.order)
    )


def on_failure_refund(msg: Envelope, uow: UnitOfWork, deps: HandlerDeps) -> None:
    """Compensation: give back exactly what was charged, once, whatever asked for it."""
    s = uow.session
    if s.get(Refund, msg.order_id):
        return
    if s.get(PaymentDecision, msg.order_id) is None:
        # The undo overtook the charge (an expiry while order.placed still waited here):
        # decided, so a late order.placed charges nothing.
        s.add(PaymentDecision(order_id=msg.order_id, outcome="cancelled", reason=msg.type))
    charge = s.get(Charge, msg.order_id)
    amount = refund_amount(charge.amount_cents if charge else None)
    refund_id = None
    if charge is not None and amount:
        refund_id = deps.gateway.refund(msg.order_id, amount, charge.card_token)
    reason = msg.payload.get("reason", msg.type)
    s.add(Refund(order_id=msg.order_id, refund_id=refund_id, amount_cents=amount, reason=reason))
    uow.emit(PaymentRefunded(refund_id=refund_id, amount_cents=amount, reason=reason))


SUBSCRIPTIONS: Subscriptions = {
    OrderPlaced: Subscription(on_order_placed),
    InventoryFailed: Subscription(on_failure_refund, compensation=True),
    ShipmentFailed: Subscription(on_failure_refund, compensation=True),
    OrderExpired: Subscription(on_failure_refund, compensation=True),
}

# Orchestrated: the same handlers, triggered by the orchestrator's commands.
ORCHESTRATED: Subscriptions = {
    ChargePayment: Subscription(on_order_placed),
    RefundPayment: Subscription(on_failure_refund, compensation=True),
}
