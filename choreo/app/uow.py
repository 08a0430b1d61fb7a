"""Units of work: one transaction per batch of deliveries, one savepoint per message.

A message's state change, its inbox mark and its outgoing events commit together; a message
whose handler fails rolls back to its savepoint alone, and the rest of the batch commits.
Nothing is published from inside: each message's `UnitOfWork.pending` is what the adapter
publishes once the batch's commit is durable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from choreo.app import copies
from choreo.app.outbox import OUTBOX_ADD, outbox_rows
from choreo.infra.db import Rows, connection_of
from models.envelope import Envelope, Message, derived_id, make_envelope
from models.tables import DeadLetter, Inbox, table_of, utcnow

_INBOX = table_of(Inbox)
# Built once: on every batch's path (building a statement costs more than running it).
_INBOX_AMONG = select(_INBOX.c.event_id).where(
    _INBOX.c.consumer == bindparam("c"), _INBOX.c.event_id.in_(bindparam("ids", expanding=True))
)
_INBOX_ADD = _INBOX.insert()
DEAD_LETTERS = Rows(DeadLetter)


class Batch:
    """One transaction for a batch of deliveries (`with Batch(...) as b:` ... `b.commit()`).

    Leaving the block without `commit()` rolls everything back.
    """

    def __init__(self, engine: Engine, source: str) -> None:
        self.engine = engine
        self.source = source
        self.session: Session | None = None
        self.committed = False

    def __enter__(self) -> Batch:
        self.session = Session(self.engine, expire_on_commit=False)
        return self

    def __exit__(self, *exc) -> None:
        session = self.session
        assert session is not None  # set by __enter__
        if not self.committed:
            session.rollback()
        session.close()

    @property
    def conn(self) -> Connection:
        assert self.session is not None, "a Batch is used inside its with block"
        return connection_of(self.session)

    def processed_among(self, consumer: str, event_ids: list[str]) -> set[str]:
        """The event ids `consumer` has already applied (its inbox), in one query."""
        if not event_ids:
            return set()
        return set(
            self.conn.execute(_INBOX_AMONG, {"c": consumer, "ids": list(event_ids)}).scalars()
        )

    @contextmanager
    def message(
        self, cause: Envelope | None, consumer: str | None = None, traceparent: str | None = None
    ) -> Iterator[UnitOfWork]:
        """A savepoint for one message. On a clean exit its inbox mark (when `consumer` is
        given) and its outbox rows join the batch; on an exception it rolls back alone.
        `traceparent`: the span handling the message, which the events it emits carry."""
        session = self.session
        assert session is not None, "a Batch is used inside its with block"
        uow = UnitOfWork(session, self.source, cause, traceparent)
        nested = session.begin_nested()
        try:
            yield uow
            uow.stage(consumer)
            nested.commit()
        except BaseException:
            if nested.is_active:
                nested.rollback()
            raise

    def record_dead_letter(
        self,
        event_id: str,
        type_: str,
        order_id: str | None,
        reason: str,
        attempts: int,
        compensation: bool,
    ) -> None:
        """The service's own record of a message it gave up on (once per event id). In its own
        savepoint, cut to the columns' sizes: a foreign id must not fail the batch's transaction."""
        assert self.session is not None, "a Batch is used inside its with block"
        with self.session.begin_nested():
            if not DEAD_LETTERS.exists(self.conn, event_id[:64]):
                DEAD_LETTERS.add(
                    self.conn,
                    event_id=event_id[:64],
                    type=type_[:64],
                    order_id=order_id[:64] if order_id else None,
                    reason=reason[:2000],
                    attempts=attempts,
                    compensation=compensation,
                )

    def record_copy(self, made: copies.Made) -> None:
        """The record that proves a copy's sender when it comes back (choreo.app.copies), in its
        own savepoint: the same record committed meanwhile by a competing worker is kept."""
        assert self.session is not None, "a Batch is used inside its with block"
        try:
            with self.session.begin_nested():
                copies.record(self.conn, made)
        except IntegrityError:
            pass

    def commit(self) -> None:
        """Durable before it returns (synchronous=FULL / synchronous_commit=on: choreo.infra.db)."""
        assert self.session is not None, "a Batch is used inside its with block"
        self.session.commit()
        self.committed = True


class UnitOfWork:
    """What a handler gets: the batch's transaction (`conn` for Core statements, `session` for
    the ORM) inside this message's savepoint, and `emit` to stage the events it causes."""

    def __init__(
        self,
        session: Session,
        source: str,
        cause: Envelope | None = None,
        traceparent: str | None = None,
    ) -> None:
        self.session = session
        self.source = source
        self.cause = cause
        self.traceparent = traceparent
        self.pending: list[Envelope] = []

    # The inbox, the outbox and mark-sent are on every message's path: plain Core statements on
    # the session's connection (same transaction), not ORM objects; the profile showed the ORM's
    # identity map and flush machinery costing more than the SQL itself.

    @property
    def conn(self) -> Connection:
        """The transaction's connection, for Core statements (`Rows`) beside the ORM session."""
        return connection_of(self.session)

    def emit(self, message: Message, order_id: str | None = None) -> Envelope:
        """Stage a message for publication, under its declared routing key; its id is derived
        from the cause, so a re-run repeats it. `order_id`: the cause's order unless given."""
        if order_id is None:
            if self.cause is None:
                raise ValueError("a message with no cause must name its order")
            order_id = self.cause.order_id
        type_ = message.routing_key
        seq = str(len(self.pending))
        event_id = derived_id(self.source, self.cause.event_id, type_, seq) if self.cause else None
        envelope = make_envelope(
            type_,
            order_id,
            message,
            source=self.source,
            cause=self.cause,
            event_id=event_id,
            traceparent=self.traceparent,
        )
        self.pending.append(envelope)
        return envelope

    def stage(self, consumer: str | None) -> None:
        """Write the inbox mark (the cause, applied by `consumer`) and the outbox rows."""
        conn = self.conn
        now = utcnow()
        if consumer is not None and self.cause is not None:
            c = self.cause
            conn.execute(
                _INBOX_ADD,
                {
                    "consumer": consumer,
                    "event_id": c.event_id,
                    "type": c.type,
                    "order_id": c.order_id,
                    "processed_at": now,
                },
            )
        if self.pending:
            conn.execute(OUTBOX_ADD, outbox_rows(self.pending, now))
