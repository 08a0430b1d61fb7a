"""The unit of work: one transaction commits the state change, the inbox mark and the outgoing events."""
from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from choreo.app.outbox import OUTBOX_ADD
from choreo.infra.db import connection_of
from models.envelope import Envelope, derived_id, make_envelope
from models.tables import Inbox, utcnow

_INBOX = Inbox.__table__
# Built once: on every message's path (building a statement costs more than running it).
_INBOX_HAS = select(_INBOX.c.event_id).where(_INBOX.c.consumer == bindparam("c"), _INBOX.c.event_id == bindparam("e"))
_INBOX_ADD = _INBOX.insert()


class UnitOfWork:
    """One transaction: the state change, the inbox mark and the outgoing events commit together.

    Nothing is published from inside: `commit()` returns the outbox rows to publish afterwards.
    """

    def __init__(self, engine: Engine, source: str, cause: Envelope | None = None) -> None:
        self.engine = engine
        self.source = source
        self.cause = cause
        self.session: Session | None = None
        self.pending: list[Envelope] = []
        self.processed: dict | None = None
        self.committed = False

    def __enter__(self) -> "UnitOfWork":
        self.session = Session(self.engine, expire_on_commit=False)
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.session.rollback()
        self.session.close()

    # The inbox, the outbox and mark-sent are on every message's path: plain Core statements on
    # the session's connection (same transaction), not ORM objects; the profile showed the ORM's
    # identity map and flush machinery costing more than the SQL itself.

    @property
    def conn(self) -> Connection:
        """The transaction's connection, for Core statements (`Rows`) beside the ORM session."""
        return connection_of(self.session)

    def already_processed(self, consumer: str, event_id: str) -> bool:
        return self.conn.execute(_INBOX_HAS, {"c": consumer, "e": event_id}).first() is not None

    def mark_processed(self, consumer: str, envelope: Envelope) -> None:
        self.processed = {"consumer": consumer, "event_id": envelope.event_id, "type": envelope.type,
                          "order_id": envelope.order_id, "processed_at": utcnow()}

    def emit(self, type: str, payload, order_id: str | None = None) -> Envelope:
        """Stage an event for publication; its id is derived from the cause, so a re-run repeats it."""
        order_id = order_id or self.cause.order_id
        seq = str(len(self.pending))
        event_id = derived_id(self.source, self.cause.event_id, type, seq) if self.cause else None
        envelope = make_envelope(type, order_id, payload, source=self.source, cause=self.cause, event_id=event_id)
        self.pending.append(envelope)
        return envelope

    def commit(self) -> list[Envelope]:
        """Commit state, inbox mark and outbox rows together; returns the envelopes to publish."""
        conn = self.conn
        if self.processed is not None:
            conn.execute(_INBOX_ADD, self.processed)
        if self.pending:
            now = utcnow()
            conn.execute(OUTBOX_ADD, [
                {"event_id": e.event_id, "type": e.type, "order_id": e.order_id, "body": e.model_dump_json(),
                 "created_at": now, "sent_at": None} for e in self.pending])
        self.session.commit()
        self.committed = True
        return list(self.pending)
