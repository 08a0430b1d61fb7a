"""Open sagas and the stuck ones: which orders wait, on which service, for how long, against
which deadline (docs/operating/watch.md, "Finding stuck sagas").

One reading of the order database answers everywhere: `choreo stuck`, the `waiting` field of
`choreo order`, the order worker's `choreo_open_sagas` and `choreo_stuck_sagas` gauges, and
the operator agent's `stuck_sagas` tool. It sits in the application layer, not in choreo.ops,
because the worker's gauge (tasks) and the order view (choreo.app.queries) read it too.

An open saga waits on one service, named by its state: PLACED on payment, PAID on inventory,
RESERVED on shipment (consumers.order.rules.WAITING_ON, each with its deadline), CANCELLING on
its refund from payment. The refund has no deadline of its own (expiry could not end it any
other way): it is measured against the payment deadline, and nothing cancels it when that
passes. A saga is stuck past `stuck_fraction` of its step's deadline, or of the saga's deadline
since it was placed; given `older_than`, past that many seconds in its step, and nothing else.
The timer row (order_deadlines) is extra information, read with a LEFT JOIN: it may be missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, func, literal_column, or_, select
from sqlalchemy.sql.elements import ColumnElement

from choreo.infra.db import engine_for
from config.settings import Settings
from consumers.order.rules import STATES, TERMINAL, WAITING_ON
from consumers.order.tables import OrderDeadline, OrderView
from models.tables import as_utc, table_of, utcnow

OPEN_STATES = tuple(s for s in STATES if s not in TERMINAL)
# The step each open state waits in, and the service that must answer it.
STEP_OF = {**WAITING_ON, "CANCELLING": "refund"}
SERVICE_OF = {**WAITING_ON, "CANCELLING": "payment"}
STEPS = tuple(STEP_OF[s] for s in OPEN_STATES)
STATE_OF_STEP = {step: state for state, step in STEP_OF.items()}
# The deadline (Settings.deadline) each step is measured against.
DEADLINE_OF = {step: step for step in WAITING_ON.values()} | {"refund": "payment"}
# When the current step started, by state: its milestone in the read model.
SINCE_FIELD = {
    "PLACED": "placed_at",
    "PAID": "paid_at",
    "RESERVED": "reserved_at",
    "CANCELLING": "updated_at",
}
# Age since placement, in buckets: (label, upper bound in seconds; None = unbounded).
AGE_BUCKETS: tuple[tuple[str, float | None], ...] = (
    ("lt_1m", 60.0),
    ("1m_5m", 300.0),
    ("5m_30m", 1800.0),
    ("gt_30m", None),
)
DEFAULT_LIMIT = 100

_V = table_of(OrderView)
_D = table_of(OrderDeadline)
# When the current step started (the updated_at fallback: a milestone never stamped).
_step_started = func.coalesce(
    case({s: _V.c[f] for s, f in SINCE_FIELD.items()}, value=_V.c.state), _V.c.updated_at
)
_placed_at = func.coalesce(_V.c.placed_at, _V.c.updated_at)
_OPEN = _V.c.state.in_(OPEN_STATES)
_LISTING = (
    select(
        _V.c.order_id,
        _V.c.state,
        _placed_at.label("placed_at"),
        _step_started.label("since"),
        _D.c.step.label("timer_step"),
        _D.c.due_at,
        _D.c.fired,
    )
    .select_from(_V.outerjoin(_D, _D.c.order_id == _V.c.order_id))
    .where(_OPEN)
)


def step_deadline(settings: Settings, step: str) -> float:
    """The deadline, in seconds, a step is measured against (the refund: payment's)."""
    return settings.deadline(DEADLINE_OF[step])


def state_of_step(step: str) -> str:
    """The open state that waits in `step`; ValueError names the steps there are."""
    if step not in STATE_OF_STEP:
        raise ValueError(f"unknown step {step!r}: one of {', '.join(STEPS)}")
    return STATE_OF_STEP[step]


def age_bucket(seconds: float) -> str:
    """The age bucket of a saga `seconds` old."""
    for label, upper in AGE_BUCKETS:
        if upper is None or seconds < upper:
            return label
    raise AssertionError("the last bucket is unbounded")


@dataclass(frozen=True)
class Criteria:
    """When an open saga is stuck: past `step[state]` seconds in its current step, or past
    `saga` seconds since it was placed (None: the step alone decides)."""

    step: dict[str, float]
    saga: float | None

    @classmethod
    def of(
        cls, settings: Settings, fraction: float | None = None, older_than: float | None = None
    ) -> Criteria:
        if older_than is not None:
            if older_than < 0:
                raise ValueError(f"older_than must be 0 or more seconds, not {older_than}")
            return cls({s: float(older_than) for s in OPEN_STATES}, None)
        f = settings.stuck_fraction if fraction is None else fraction
        if not 0 < f <= 1:
            raise ValueError(f"fraction must be in (0, 1], not {f}")
        return cls(
            {s: f * step_deadline(settings, STEP_OF[s]) for s in OPEN_STATES},
            f * settings.deadline("saga"),
        )

    def why(self, state: str, step_age: float, saga_age: float) -> str | None:
        """The same test as `where`, on ages already known: "step" (too long in its step),
        "saga" (too long since placed), or None (not stuck)."""
        if step_age > self.step[state]:
            return "step"
        return "saga" if self.saga is not None and saga_age > self.saga else None

    def where(self, now: datetime) -> ColumnElement[bool]:
        """The SQL form of `stuck` at `now`: cut-off times, so every database compares plain
        timestamps."""
        over = [
            and_(_V.c.state == state, _step_started < now - timedelta(seconds=seconds))
            for state, seconds in self.step.items()
        ]
        if self.saga is not None:
            over.append(_placed_at < now - timedelta(seconds=self.saga))
        return or_(*over)


def _utc(at: datetime | str | None) -> datetime | None:
    return None if at is None else as_utc(at)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


@dataclass(frozen=True)
class Waiting:
    """An open saga's wait: on which service, since when, against which deadline."""

    order_id: str
    state: str
    step: str  # payment, inventory, shipment (each with its deadline), or refund
    service: str  # the service that must answer
    since: datetime  # when the current step started
    placed_at: datetime
    step_age: float  # seconds in the current step
    saga_age: float  # seconds since placed
    deadline: float  # the step's deadline, seconds
    deadline_at: datetime  # the earlier of the step's and the saga's deadline
    due_at: datetime | None  # when its timer fires next (order_deadlines), if it has one
    timer_step: str | None  # what that timer watches: the step, or "saga"
    fired: int | None  # how often that timer fired already
    why: str | None  # stuck, and by which measure: "step" or "saga"; None: not stuck
    overdue: bool  # past the deadline itself

    @property
    def stuck(self) -> bool:
        return self.why is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "state": self.state,
            "step": self.step,
            "service": self.service,
            "since": _iso(self.since),
            "placed_at": _iso(self.placed_at),
            "step_age_seconds": round(self.step_age, 1),
            "saga_age_seconds": round(self.saga_age, 1),
            "deadline_seconds": self.deadline,
            "deadline_at": _iso(self.deadline_at),
            "due_at": _iso(self.due_at),
            "timer_step": self.timer_step,
            "timer_fired": self.fired,
            "stuck": self.stuck,
            "stuck_by": self.why,
            "overdue": self.overdue,
        }


def waiting_of(
    settings: Settings,
    criteria: Criteria,
    now: datetime,
    *,
    order_id: str,
    state: str,
    placed_at: datetime | str | None,
    since: datetime | str | None,
    timer: tuple[str | None, datetime | str | None, int | None] = (None, None, None),
) -> Waiting:
    """The wait of an open order from its stored times; `timer`: its order_deadlines row's
    (step, due_at, fired), or Nones."""
    step = STEP_OF[state]
    started = _utc(since) or now
    placed = _utc(placed_at) or started
    step_age = (now - started).total_seconds()
    saga_age = (now - placed).total_seconds()
    deadline = step_deadline(settings, step)
    deadline_at = min(
        started + timedelta(seconds=deadline),
        placed + timedelta(seconds=settings.deadline("saga")),
    )
    timer_step, due_at, fired = timer
    return Waiting(
        order_id=order_id,
        state=state,
        step=step,
        service=SERVICE_OF[state],
        since=started,
        placed_at=placed,
        step_age=step_age,
        saga_age=saga_age,
        deadline=deadline,
        deadline_at=deadline_at,
        due_at=_utc(due_at),
        timer_step=timer_step,
        fired=fired,
        why=criteria.why(state, step_age, saga_age),
        overdue=now >= deadline_at,
    )


def waiting(
    settings: Settings,
    view: OrderView,
    timer: OrderDeadline | None = None,
    now: datetime | None = None,
) -> Waiting | None:
    """One order's wait (None once it is terminal): the `waiting` field of `choreo order`."""
    if view.state not in STEP_OF:
        return None
    return waiting_of(
        settings,
        Criteria.of(settings),
        now or utcnow(),
        order_id=view.order_id,
        state=view.state,
        placed_at=view.placed_at,
        since=getattr(view, SINCE_FIELD[view.state]) or view.updated_at,
        timer=(timer.step, timer.due_at, timer.fired) if timer else (None, None, None),
    )


def _rows(settings: Settings, query: Select) -> list:
    with engine_for(settings, "order").connect() as conn:
        rows = conn.execute(query).all()
        conn.rollback()
    return list(rows)


def stuck_sagas(
    settings: Settings,
    *,
    step: str | None = None,
    older_than: float | None = None,
    fraction: float | None = None,
    limit: int = DEFAULT_LIMIT,
    now: datetime | None = None,
) -> list[Waiting]:
    """The stuck open sagas, longest in their step first, at most `limit` (one query).

    `step` keeps one step (payment, inventory, shipment, refund); `older_than` (seconds in the
    step) replaces the default criteria: past `fraction` (default settings.stuck_fraction) of
    the step's deadline, or of the saga's since placement."""
    now = now or utcnow()
    criteria = Criteria.of(settings, fraction, older_than)
    query = _LISTING.where(criteria.where(now))
    if step is not None:
        query = query.where(_V.c.state == state_of_step(step))
    query = query.order_by(_step_started, _V.c.order_id).limit(max(1, int(limit)))
    return [
        waiting_of(
            settings,
            criteria,
            now,
            order_id=r.order_id,
            state=r.state,
            placed_at=r.placed_at,
            since=r.since,
            timer=(r.timer_step, r.due_at, r.fired),
        )
        for r in _rows(settings, query)
    ]


@dataclass(frozen=True)
class SagaSummary:
    """Open sagas by (state, age bucket since placement), stuck ones by step; every pair and
    every step present, zeros included (a gauge's series do not come and go)."""

    open: dict[tuple[str, str], int]
    stuck: dict[str, int]

    @property
    def open_total(self) -> int:
        return sum(self.open.values())

    @property
    def stuck_total(self) -> int:
        return sum(self.stuck.values())

    def as_dict(self) -> dict[str, Any]:
        by_state: dict[str, dict[str, int]] = {s: {} for s in OPEN_STATES}
        for (state, age), n in self.open.items():
            by_state[state][age] = n
        return {"open": by_state, "open_total": self.open_total, "stuck": dict(self.stuck)}


def _summary_query(criteria: Criteria, now: datetime) -> Select:
    # Constants inlined, not bound: a CASE of untyped parameters has no type on PostgreSQL.
    buckets: list[tuple[ColumnElement[bool], ColumnElement[Any]]] = [
        (_placed_at > now - timedelta(seconds=upper), literal_column(f"'{label}'"))
        for label, upper in AGE_BUCKETS
        if upper is not None
    ]
    per_order = (
        select(
            _V.c.state.label("state"),
            case(*buckets, else_=literal_column(f"'{AGE_BUCKETS[-1][0]}'")).label("age"),
            case((criteria.where(now), literal_column("1")), else_=literal_column("0")).label(
                "stuck"
            ),
        )
        .where(_OPEN)
        .subquery()
    )
    # Grouped over a subquery: PostgreSQL would not match a CASE with parameters in SELECT
    # to the same CASE in GROUP BY.
    return select(
        per_order.c.state, per_order.c.age, func.count(), func.sum(per_order.c.stuck)
    ).group_by(per_order.c.state, per_order.c.age)


def saga_summary(
    settings: Settings, *, fraction: float | None = None, now: datetime | None = None
) -> SagaSummary:
    """Open sagas counted by state and age, and stuck ones by step (one grouped query): the
    choreo_open_sagas and choreo_stuck_sagas gauges, and the totals `choreo stuck` prints."""
    criteria = Criteria.of(settings, fraction)
    opened = {(s, label): 0 for s in OPEN_STATES for label, _ in AGE_BUCKETS}
    stuck = dict.fromkeys(STEPS, 0)
    for state, age, n, n_stuck in _rows(settings, _summary_query(criteria, now or utcnow())):
        opened[(state, age)] = int(n)
        stuck[STEP_OF[state]] += int(n_stuck or 0)
    return SagaSummary(opened, stuck)
