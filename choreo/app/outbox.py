"""The outbox: rows committed with the state that caused them, published after commit, marked
sent."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Engine

from choreo.infra.db import non_durable
from models.envelope import Envelope
from models.tables import Outbox, as_utc, table_of, utcnow

_OUTBOX = table_of(Outbox)
# Built once: on every message's path.
OUTBOX_ADD = _OUTBOX.insert()
_OUTBOX_SENT = (
    _OUTBOX.update()
    .where(_OUTBOX.c.event_id.in_(bindparam("ids", expanding=True)))
    .values(sent_at=bindparam("sent_at"))
)
_BACKLOG = select(func.count(), func.min(_OUTBOX.c.created_at)).where(_OUTBOX.c.sent_at.is_(None))


def outbox_rows(envelopes: list[Envelope], now: datetime) -> list[dict]:
    """The outbox rows (for OUTBOX_ADD) of events staged `now`, not sent yet."""
    return [
        {
            "event_id": e.event_id,
            "type": e.type,
            "order_id": e.order_id,
            "body": e.model_dump_json(),
            "created_at": now,
            "sent_at": None,
        }
        for e in envelopes
    ]


def unsent_outbox(engine: Engine, older_than: float, limit: int = 500) -> list[Envelope]:
    """Outbox rows nobody marked sent within `older_than` seconds, oldest first."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    with engine.connect() as conn:
        bodies = (
            conn.execute(
                select(_OUTBOX.c.body)
                .where(_OUTBOX.c.sent_at.is_(None), _OUTBOX.c.created_at <= cutoff)
                .order_by(_OUTBOX.c.id)
                .limit(limit)
            )
            .scalars()
            .all()
        )
        conn.rollback()
    return [Envelope.model_validate_json(b) for b in bodies]


def mark_sent(engine: Engine, event_ids: list[str]) -> None:
    """Record that the broker confirmed these events (by event id, unique in the outbox).

    A non-durable commit: a power loss may undo it, and then the relay publishes the events
    once more and their consumers absorb the duplicates. Nothing is acked on its strength."""
    if not event_ids:
        return
    with non_durable(engine) as conn:
        conn.execute(_OUTBOX_SENT, {"ids": list(event_ids), "sent_at": utcnow()})


def count_unsent(engine: Engine) -> int:
    """Outbox rows the broker has not confirmed yet (in flight, or stranded for the relay)."""
    return backlog(engine)[0]


def backlog(engine: Engine) -> tuple[int, float | None]:
    """Unsent outbox rows and the oldest one's creation time (epoch seconds): `choreo status`
    and the metrics (choreo_outbox_unsent, choreo_outbox_oldest_unsent_seconds)."""
    with engine.connect() as conn:
        n, oldest = conn.execute(_BACKLOG).one()
        conn.rollback()
    if oldest is None:
        return n, None
    return n, as_utc(oldest).timestamp()
