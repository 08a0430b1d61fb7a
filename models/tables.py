"""Tables every service shares (outbox, inbox, dead letters, copies), those of the services that
are not domains, and where each domain's own are (`consumers/<domain>/tables.py`). Each service
creates only its own, in its own database."""

from __future__ import annotations

from datetime import UTC, datetime
from types import ModuleType

from sqlalchemy import Column, DateTime, Index, Table, Text
from sqlmodel import Field, SQLModel

from models.services import service_part


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(at: datetime | str) -> datetime:
    """A stored time (a ts_column's value) as aware UTC: SQLite hands it back naive or as text,
    PostgreSQL aware."""
    at = datetime.fromisoformat(at) if isinstance(at, str) else at
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def ts_column(**kw) -> Column:
    return Column(DateTime(timezone=True), **kw)


# --- in every service's database -----------------------------------------------------


class Outbox(SQLModel, table=True):
    """Events to publish, written in the same transaction as the state that caused them."""

    __tablename__ = "outbox"
    # The relay's unsent rows (sent_at NULL) and the retention cleaner's oldest sent ones.
    __table_args__ = (Index("ix_outbox_unsent", "sent_at", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    type: str = Field(max_length=64)
    order_id: str = Field(max_length=64, index=True)
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))


class Inbox(SQLModel, table=True):
    """Messages this service has applied: the unique key that makes redelivery harmless."""

    __tablename__ = "inbox"
    # The retention cleaner's oldest-first pick (choreo.app.retention): without it each batch scans.
    __table_args__ = (Index("ix_inbox_processed_at", "processed_at"),)
    consumer: str = Field(primary_key=True, max_length=32)
    event_id: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=64)
    order_id: str = Field(max_length=64, index=True)
    processed_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


class DeadLetter(SQLModel, table=True):
    """A message this service gave up on: the operator's record of a critical alert."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_dead_lettered_at", "dead_lettered_at"),)
    event_id: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=64)
    order_id: str | None = Field(default=None, max_length=64, index=True)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    attempts: int = 0
    compensation: bool = False
    dead_lettered_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


class CopyRecord(SQLModel, table=True):
    """A copy this service made of a delivery (a retry rung's, a dead letter's), written in the
    transaction that decided it: the proof, checked when the copy comes back, of the sender the
    copy names (tasks.adapter). The broker vouches only for the copy's publisher, this service, so
    a copy with no record here (made by anyone else holding its broker password) is refused."""

    __tablename__ = "copies"
    __table_args__ = (Index("ix_copies_created_at", "created_at"),)
    event_id: str = Field(primary_key=True, max_length=64)  # the delivery's task id
    # sha256 over the original sender, the message name and its arguments (choreo.app.copies)
    digest: str = Field(primary_key=True, max_length=64)
    sender: str = Field(max_length=32)
    kind: str = Field(max_length=16)  # retry | dead_letter: the first copy made of it
    attempt: int = 0  # that copy's rung (a dead letter's: the attempts it had)
    created_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


# --- order ----------------------------------------------------------------------------


# --- payment --------------------------------------------------------------------------


class GatewayLedger(SQLModel, table=True):
    """The sandbox gateway's own books (an external system: it commits on its own).

    Like a real provider, it honours idempotency keys: the same key never moves money twice.
    """

    __tablename__ = "gateway_ledger"
    idempotency_key: str = Field(primary_key=True, max_length=96)
    kind: str = Field(max_length=16)
    order_id: str = Field(max_length=64, index=True)
    amount_cents: int
    reference: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


class GatewayAttempt(SQLModel, table=True):
    __tablename__ = "gateway_attempts"
    idempotency_key: str = Field(primary_key=True, max_length=96)
    attempts: int = 0


# --- inventory ------------------------------------------------------------------------


# --- shipment -------------------------------------------------------------------------


# --- notification ---------------------------------------------------------------------


# --- the operator's records ---------------------------------------------------------------


class ReplayRecord(SQLModel, table=True):
    """One dead letter an operator replayed (`choreo dlq replay --execute`): when, which message,
    by whom, and what came of it. Written (durably) after the broker confirmed the replayed
    copy and before the dead letter is acked."""

    __tablename__ = "dlq_replays"
    __table_args__ = (Index("ix_dlq_replays_replayed_at", "replayed_at"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=36, index=True)  # one `--execute` run
    replayed_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))
    by: str = Field(max_length=128)
    domain: str = Field(max_length=32, index=True)
    event_id: str = Field(max_length=64, index=True)
    message_id: str | None = Field(default=None, max_length=64)
    type: str = Field(max_length=64)
    order_id: str | None = Field(default=None, max_length=64)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    # The consumer's inbox already held this event when it was replayed: the copy is absorbed.
    already_processed: bool | None = None  # None: could not check
    # replayed | forced_outside_window | refused_outside_window (choreo.ops.replay)
    outcome: str = Field(max_length=32)


# --- orchestrator (orchestrated saga mode only) -----------------------------------------


# --- user -----------------------------------------------------------------------------


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    email: str = Field(max_length=128)


# In every domain's database (and the orchestrator's): what the adapter, the outbox relay, the
# audit, `choreo status` and `choreo order` read for every service.
COMMON: list[type[SQLModel]] = [Outbox, Inbox, DeadLetter, CopyRecord]
# The services that are not domains: the user service, the sandbox gateway, the operator's records.
OTHERS: dict[str, list[type[SQLModel]]] = {
    "gateway": [GatewayLedger, GatewayAttempt],
    "user": [Customer],
    "operator": [ReplayRecord],
}


def service_tables(service: str) -> ModuleType | None:
    """A domain's (or the orchestrator's) own tables module, `consumers/<service>/tables.py`."""
    return None if service in OTHERS else service_part(service, "tables")


def tables_of(service: str) -> list[type[SQLModel]]:
    """Every table of a service's database: a domain's own `TABLES` and `COMMON`."""
    module = service_tables(service)
    return OTHERS[service] if module is None else [*COMMON, *module.TABLES]


def table_of(model: type[SQLModel]) -> Table:
    """A table class's Core table, for prebuilt statements (SQLModel sets it on the class but
    does not declare it to type checkers)."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table
