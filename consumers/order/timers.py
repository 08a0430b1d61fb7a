"""Durable saga deadlines: a timer row per order moving forward, kept in the order's own
transactions, and drained by every order worker (docs/deadlines.md).

`schedule` runs inside the transaction that appends the order's events: the step that starts a
wait writes its timer, the step that ends it moves or deletes it, so a timer exists exactly
while its order waits, whatever crashes. `fire_due` turns due rows into `order.deadline`
messages through the outbox, in one durable transaction that also re-arms each row: a firing
lost anywhere (a killed worker, a broker restart) fires again, and the order decides on its own
events whether the firing still means anything.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, literal, select
from sqlalchemy.engine import Connection, Engine

from choreo.app.outbox import OUTBOX_ADD, outbox_rows
from config.settings import Settings, get_settings
from consumers.order import rules as domain
from consumers.order.messages import DeadlineDue
from consumers.order.tables import OrderDeadline
from models.envelope import Envelope, child_trace, derived_id, make_envelope
from models.tables import table_of, utcnow

_T = table_of(OrderDeadline)
# Built once: on the order service's hot path (one statement per change of step).
_START = _T.insert()
_CLEAR = _T.delete().where(_T.c.order_id == bindparam("oid"))
_SAGA_FIRST = _T.c.saga_due_at < bindparam("step_due")
_MOVE = (
    _T.update()
    .where(_T.c.order_id == bindparam("oid"))
    .values(
        step=case((_SAGA_FIRST, literal("saga")), else_=bindparam("new_step")),
        step_due_at=bindparam("step_due"),
        due_at=case((_SAGA_FIRST, _T.c.saga_due_at), else_=bindparam("step_due")),
        fired=0,
        traceparent=bindparam("tp"),
    )
)
_DUE = (
    select(
        _T.c.order_id,
        _T.c.step,
        _T.c.step_due_at,
        _T.c.saga_due_at,
        _T.c.fired,
        _T.c.traceparent,
    )
    .where(_T.c.due_at <= bindparam("now"))
    .order_by(_T.c.due_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)  # PostgreSQL: competing workers fire disjoint rows
)
_REARM = (
    _T.update()
    .where(_T.c.order_id == bindparam("oid"))
    .values(due_at=bindparam("again"), fired=_T.c.fired + 1)
)


def schedule(
    conn: Connection,
    before: domain.Order,
    after: domain.Order,
    now: datetime,
    traceparent: str | None = None,
    settings: Settings | None = None,
) -> None:
    """Keep the order's timer in step with its state, in the caller's transaction."""
    waited = domain.WAITING_ON.get(before.state) if before.exists else None
    waits = domain.WAITING_ON.get(after.state)
    if waits == waited:
        return
    if waits is None:
        conn.execute(_CLEAR, {"oid": after.order_id})
        return
    settings = settings or get_settings()
    step_due = now + timedelta(seconds=settings.deadline(waits))
    if not before.exists:
        saga_due = now + timedelta(seconds=settings.deadline("saga"))
        saga_first = saga_due < step_due
        conn.execute(
            _START,
            {
                "order_id": after.order_id,
                "step": "saga" if saga_first else waits,
                "step_due_at": step_due,
                "saga_due_at": saga_due,
                "due_at": saga_due if saga_first else step_due,
                "fired": 0,
                "traceparent": traceparent,
            },
        )
        return
    conn.execute(
        _MOVE, {"oid": after.order_id, "new_step": waits, "step_due": step_due, "tp": traceparent}
    )


def fire_due(
    engine: Engine,
    settings: Settings,
    now: datetime | None = None,
    limit: int = 200,
    before_commit: Callable[[], None] | None = None,
) -> list[Envelope]:
    """Fire the timers due by `now`: one `order.deadline` message each into the outbox, and each
    row re-armed `timer_refire` seconds later, in one durable commit. The caller publishes the
    returned envelopes (the outbox relay does, if it cannot). `before_commit`: a test's hook,
    called when there is something to fire, before the commit."""
    now = now or utcnow()
    again = now + timedelta(seconds=settings.timer_refire)
    with engine.begin() as conn:
        rows = conn.execute(_DUE, {"now": now, "limit": limit}).all()
        if not rows:
            return []
        fired = [_firing(r, now) for r in rows]
        conn.execute(OUTBOX_ADD, outbox_rows(fired, now))
        conn.execute(_REARM, [{"oid": r.order_id, "again": again} for r in rows])
        if before_commit is not None:
            before_commit()
    return fired


def _firing(row, now: datetime) -> Envelope:
    # the deadline that passed (a re-armed row's due_at is later: when to fire again)
    due = row.saga_due_at if row.step == "saga" else row.step_due_at
    due = due if due.tzinfo else due.replace(tzinfo=now.tzinfo)
    return make_envelope(
        DeadlineDue.routing_key,
        row.order_id,
        DeadlineDue(step=row.step, due_at=due),
        source="order",
        # the same row firing the same time again (a rolled-back sweep) is the same message
        event_id=derived_id("order.deadline", row.order_id, row.step, str(row.fired)),
        now=now,
        # in the saga's trace: a child of the span that started the wait
        traceparent=child_trace(row.traceparent) if row.traceparent else None,
    )
