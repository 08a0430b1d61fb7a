"""The orchestrated saga: which command to send next, and which steps to undo, in reverse order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

Command = tuple[str, dict[str, Any]]  # (command type, payload)
Reaction = tuple["Saga", list[Command]]


@dataclass(frozen=True)
class Step:
    """One step of the saga, as data: what does it, what says it is done, and how it is undone."""

    name: str
    do: str  # the command that does it
    done_by: str  # the event saying it is done
    undo: str | None = None  # the command that undoes it
    undone_by: str | None = None  # the event saying it was undone


STEPS = (
    Step("charge", "charge_payment", "payment.completed", "refund_payment", "payment.refunded"),
    Step("reserve", "reserve_stock", "inventory.reserved", "release_stock", "inventory.released"),
    Step("ship", "create_shipment", "shipment.created", "cancel_shipment", "shipment.cancelled"),
)
BY_NAME = {s.name: s for s in STEPS}
DONE_BY = {s.done_by: s.name for s in STEPS}
UNDONE_BY = {s.undone_by: s.name for s in STEPS if s.undone_by}
FAILED_BY = {
    "payment.failed": "payment_declined",
    "inventory.failed": "out_of_stock",
    "shipment.failed": "shipment_failed",
}
ENDED = ("completed", "cancelled", "failed")


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
        undoable = {s.name for s in STEPS if s.undo}
        return [s for s in reversed(self.done) if s in undoable and s not in self.undone]


def _do(saga: Saga, step: str) -> Command:
    payload: dict[str, Any] = {"order": saga.order}
    if step == "charge":
        payload["card_token"] = saga.card_token
    return BY_NAME[step].do, payload


def _undo(saga: Saga, step: str) -> Command:
    undo = BY_NAME[step].undo
    assert undo is not None, f"step {step} has no undo"
    return undo, {"reason": saga.failure or "compensation"}


def _next_undo(saga: Saga) -> Reaction:
    """One undo at a time, most recent first; none left: the saga is cancelled."""
    pending = saga.to_undo
    if not pending:
        return replace(saga, status="cancelled"), []
    return saga, [_undo(saga, pending[0])]


def _step_done(saga: Saga, step: str) -> Reaction:
    if step in saga.done:
        return saga, []
    saga = replace(saga, done=(*saga.done, step))
    if saga.status == "cancelled":
        # A late answer (the saga expired while the command waited): undo it, on its own.
        return saga, [_undo(saga, step)] if step in saga.to_undo else []
    if saga.status == "compensating":
        # A step finished after the saga failed (out of order): undo it too.
        late = step in saga.to_undo and len(saga.to_undo) == 1
        return saga, [_undo(saga, step)] if late else []
    names = [s.name for s in STEPS]
    if step == names[-1]:
        return replace(saga, status="completed"), []
    return saga, [_do(saga, names[names.index(step) + 1])]


def _step_failed(saga: Saga, failure: str) -> Reaction:
    if saga.status == "compensating":
        return saga, []
    return _next_undo(replace(saga, failure=failure, status="compensating"))


def _step_undone(saga: Saga, step: str) -> Reaction:
    if step in saga.undone:
        return saga, []
    saga = replace(saga, undone=(*saga.undone, step))
    if saga.status != "compensating":
        return saga, []
    return _next_undo(saga)


REACTIONS: tuple[tuple[dict[str, str], Callable[[Saga, str], Reaction]], ...] = (
    (DONE_BY, _step_done),
    (FAILED_BY, _step_failed),
    (UNDONE_BY, _step_undone),
)


def _expired(saga: Saga, reason: str) -> Reaction:
    """The order's deadline passed (order.expired): undo what was done, most recent first; what
    is done later is undone as it is answered (`_step_done`)."""
    if saga.status != "running":
        return saga, []
    return _next_undo(replace(saga, failure=reason, status="compensating"))


def _after_cancel(saga: Saga, event_type: str) -> Reaction:
    if event_type in DONE_BY:
        return _step_done(saga, DONE_BY[event_type])
    if event_type in UNDONE_BY:
        return _step_undone(saga, UNDONE_BY[event_type])
    return saga, []


def react(saga: Saga, event_type: str, payload: dict) -> Reaction:
    """The saga after `event_type`, and the commands to send. Repeated events send nothing."""
    if event_type == "order.placed":
        if saga.order is not None:
            return saga, []
        started = replace(saga, order=payload["order"], card_token=payload["card_token"])
        # Placed after it already expired (order.placed waited in a retry): nothing to start.
        return started, [_do(started, "charge")] if saga.status == "running" else []
    if event_type == "order.expired":
        return _expired(saga, payload["reason"])
    if saga.status == "cancelled":  # late answers, and their undoing, after an expiry
        return _after_cancel(saga, event_type)
    if saga.order is None or saga.status in ENDED:
        return saga, []
    if event_type == "saga.dead_lettered":
        return replace(saga, status="failed"), []
    for table, reaction in REACTIONS:
        if event_type in table:
            return reaction(saga, table[event_type])
    return saga, []
