"""Read side for operators: an order and its timeline across services, the system summary.

Reads the order read model (never the write side) and each service's own tables; Flower's
in-memory history is not a source (flower#415).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlmodel import Session, col, func, select

from choreo.app.outbox import count_unsent
from choreo.app.stuck import waiting
from choreo.infra.db import engine_for
from config.settings import SERVICES, Settings
from consumers.inventory.tables import Reservation
from consumers.notification.tables import Notification
from consumers.order.tables import OrderDeadline, OrderEvent, OrderView
from consumers.payment.tables import Charge, Refund
from consumers.shipment.tables import Shipment
from models.tables import DeadLetter, Inbox, Outbox


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _said(data: dict) -> str | None:
    """An order event's reason, and what it said about it ("price_mismatch: client price ...")."""
    reason, detail = data.get("reason"), data.get("detail")
    return f"{reason}: {detail}" if reason and detail else reason or detail


def order_details(settings: Settings, order_id: str) -> dict[str, Any] | None:
    eng = {s: engine_for(settings, s) for s in SERVICES}
    with Session(eng["order"]) as s:
        view = s.get(OrderView, order_id)
        if view is None:
            return None
        wait = waiting(settings, view, s.get(OrderDeadline, order_id))
        events = s.exec(
            select(OrderEvent)
            .where(OrderEvent.order_id == order_id)
            .order_by(col(OrderEvent.version))
        ).all()
    timeline: list[dict] = [
        {
            "at": _iso(e.recorded_at),
            "service": "order",
            "what": f"recorded {e.type}",
            "detail": _said(e.data),
        }
        for e in events
    ]
    reason_detail = next(
        (
            e.data["detail"]
            for e in reversed(events)
            if e.data.get("detail") and e.data.get("reason") == view.reason
        ),
        None,
    )
    for domain in settings.domains:
        with Session(eng[domain]) as s:
            for handled in s.exec(select(Inbox).where(Inbox.order_id == order_id)):
                timeline.append(
                    {
                        "at": _iso(handled.processed_at),
                        "service": domain,
                        "what": f"handled {handled.type}",
                        "detail": handled.event_id,
                    }
                )
            for emitted in s.exec(select(Outbox).where(Outbox.order_id == order_id)):
                timeline.append(
                    {
                        "at": _iso(emitted.created_at),
                        "service": domain,
                        "what": f"emitted {emitted.type}",
                        "detail": "sent" if emitted.sent_at else "UNSENT",
                    }
                )
            for dead in s.exec(select(DeadLetter).where(DeadLetter.order_id == order_id)):
                timeline.append(
                    {
                        "at": _iso(dead.dead_lettered_at),
                        "service": domain,
                        "what": f"dead-lettered {dead.type}",
                        "detail": dead.reason,
                    }
                )
    timeline.sort(key=lambda t: t["at"] or "")
    with Session(eng["payment"]) as s:
        charge, refund = s.get(Charge, order_id), s.get(Refund, order_id)
    with Session(eng["inventory"]) as s:
        reservation = s.get(Reservation, order_id)
    with Session(eng["shipment"]) as s:
        shipment = s.get(Shipment, order_id)
    with Session(eng["notification"]) as s:
        notes = s.exec(select(Notification).where(Notification.order_id == order_id)).all()
    return {
        "order_id": order_id,
        "state": view.state,
        "reason": view.reason,
        # What the reason means for this order, when the order service said more: the lines and
        # prices of a price_mismatch, the SKUs of an unknown_sku, a failed compensation's cause.
        "reason_detail": reason_detail,
        "customer_id": view.customer_id,
        "amount_cents": view.amount_cents,
        "items": view.items,
        "address": view.address,
        "card_token": view.card_token,
        "version": view.version,
        "placed_at": _iso(view.placed_at),
        "ended_at": _iso(view.ended_at),
        # An open order: the service it waits on, since when, its deadline and timer.
        "waiting": wait.as_dict() if wait is not None else None,
        "payment": {
            "charge": {"charge_id": charge.charge_id, "amount_cents": charge.amount_cents}
            if charge
            else None,
            "refund": {
                "refund_id": refund.refund_id,
                "amount_cents": refund.amount_cents,
                "reason": refund.reason,
            }
            if refund
            else None,
        },
        "stock": {
            "reservation_id": reservation.reservation_id,
            "status": reservation.status,
            "items": reservation.items,
        }
        if reservation
        else None,
        "shipment": {
            "status": shipment.status,
            "shipment_id": shipment.shipment_id,
            "tracking_code": shipment.tracking_code,
            "reason": shipment.reason,
        }
        if shipment
        else None,
        "notifications": [
            {"kind": n.kind, "email": n.email, "sent_at": _iso(n.sent_at)} for n in notes
        ],
        "timeline": timeline,
    }


def order_states(
    settings: Settings, order_ids: list[str] | None = None
) -> dict[str, tuple[str, str | None]]:
    with Session(engine_for(settings, "order")) as s:
        q = select(OrderView.order_id, OrderView.state, OrderView.reason)
        if order_ids is not None:
            found: dict[str, tuple[str, str | None]] = {}
            for i in range(0, len(order_ids), 500):
                chunk = order_ids[i : i + 500]
                found.update(
                    {o: (st, r) for o, st, r in s.exec(q.where(col(OrderView.order_id).in_(chunk)))}
                )
            return found
        return {o: (st, r) for o, st, r in s.exec(q)}


def unsent_total(settings: Settings) -> int:
    """Outbox rows not yet confirmed by the broker, over every service with an outbox."""
    return sum(count_unsent(engine_for(settings, d)) for d in settings.domains)


def system_summary(settings: Settings) -> dict[str, Any]:
    """Orders by state and reason, unsent outbox rows and dead-letter records per service."""
    with Session(engine_for(settings, "order")) as s:
        rows = s.exec(
            select(OrderView.state, OrderView.reason, func.count()).group_by(
                col(OrderView.state), col(OrderView.reason)
            )
        ).all()
    by_state: Counter = Counter()
    by_reason = []
    for state, reason, n in rows:
        by_state[state] += n
        by_reason.append({"state": state, "reason": reason, "count": n})
    unsent, dead = {}, {}
    for domain in settings.domains:
        unsent[domain] = count_unsent(engine_for(settings, domain))
        with Session(engine_for(settings, domain)) as s:
            dead[domain] = s.exec(select(func.count()).select_from(DeadLetter)).one()
    return {
        "saga_mode": settings.saga_mode,
        "orders": {
            "total": sum(by_state.values()),
            "by_state": dict(by_state),
            "by_state_reason": sorted(by_reason, key=lambda r: (r["state"], r["reason"] or "")),
        },
        "outbox_unsent": unsent,
        "dead_letter_records": dead,
    }
