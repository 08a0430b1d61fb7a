"""The orchestrated saga: which command to send next, and which steps to undo, in reverse order."""

from __future__ import annotations

from dataclasses import dataclass, replace

# step name, command that does it, command that undoes it, event saying it was undone
STEPS = (
    ("charge", "charge_payment", "refund_payment", "payment.refunded"),
    ("reserve", "reserve_stock", "release_stock", "inventory.released"),
    ("ship", "create_shipment", None, None),
)
DONE_BY = {
    "payment.completed": "charge",
    "inventory.reserved": "reserve",
    "shipment.created": "ship",
}
FAILED_BY = {
    "payment.failed": "payment_declined",
    "inventory.failed": "out_of_stock",
    "shipment.failed": "shipment_failed",
}
UNDONE_BY = {undone_event: step for step, _, _, undone_event in STEPS if undone_event}


@dataclass(frozen=True)
class Saga:
    order_id: str
    order: dict | None = None
    card_token: str = ""
    done: tuple[str, ...] = ()
    undone: tuple[str, ...] = ()
    failure: str | None = None
    status: str = "running"  # running | compensating | completed | cancelled | failed

    @property
    def to_undo(self) -> list[str]:
        """Completed steps with an undo that are not undone yet, most recent first."""
        undoable = {s for s, _, undo, _ in STEPS if undo}
        return [s for s in reversed(self.done) if s in undoable and s not in self.undone]


def _command(step: str, which: int) -> str:
    return next(row[which] for row in STEPS if row[0] == step)


def _do(saga: Saga, step: str) -> tuple[str, dict]:
    payload = {"order": saga.order}
    if step == "charge":
        payload["card_token"] = saga.card_token
    return _command(step, 1), payload


def _undo(saga: Saga, step: str) -> tuple[str, dict]:
    return _command(step, 2), {"reason": saga.failure or "compensation"}


def react(saga: Saga, event_type: str, payload: dict) -> tuple[Saga, list[tuple[str, dict]]]:
    """The saga after `event_type`, and the commands to send. Repeated events send nothing."""
    if event_type == "order.placed":
        if saga.order is not None:
            return saga, []
        saga = replace(saga, order=payload["order"], card_token=payload["card_token"])
        return saga, [_do(saga, "charge")]
    if saga.order is None or saga.status in ("completed", "cancelled", "failed"):
        return saga, []
    if event_type == "saga.dead_lettered":
        return replace(saga, status="failed"), []
    if event_type in DONE_BY:
        step = DONE_BY[event_type]
        if step in saga.done:
            return saga, []
        saga = replace(saga, done=(*saga.done, step))
        if saga.status == "compensating":
            # A step finished after the saga failed (out of order): undo it too.
            return saga, (
                [_undo(saga, step)] if step in saga.to_undo and len(saga.to_undo) == 1 else []
            )
        order = [s for s, *_ in STEPS]
        if step == order[-1]:
            return replace(saga, status="completed"), []
        return saga, [_do(saga, order[order.index(step) + 1])]
    if event_type in FAILED_BY:
        if saga.status == "compensating":
            return saga, []
        saga = replace(saga, failure=FAILED_BY[event_type], status="compensating")
        pending = saga.to_undo
        if not pending:
            return replace(saga, status="cancelled"), []
        return saga, [_undo(saga, pending[0])]  # one at a time, most recent first
    if event_type in UNDONE_BY:
        step = UNDONE_BY[event_type]
        if step in saga.undone:
            return saga, []
        saga = replace(saga, undone=(*saga.undone, step))
        pending = saga.to_undo
        if saga.status != "compensating":
            return saga, []
        if not pending:
            return replace(saga, status="cancelled"), []
        return saga, [_undo(saga, pending[0])]
    return saga, []
