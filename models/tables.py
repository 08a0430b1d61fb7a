"""Database tables of every service. Each service creates only its own in its own database."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Column, DateTime, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw) -> Column:
    return Column(DateTime(timezone=True), **kw)


# --- in every service's database -----------------------------------------------------


class Outbox(SQLModel, table=True):
    """Events to publish, written in the same transaction as the state that caused them."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unsent", "sent_at", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    type: str = Field(max_length=64)
    order_id: str = Field(max_length=64, index=True)
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class Inbox(SQLModel, table=True):
    """Messages this service has applied: the unique key that makes redelivery harmless."""

    __tablename__ = "inbox"
    consumer: str = Field(primary_key=True, max_length=32)
    event_id: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=64)
    order_id: str = Field(max_length=64, index=True)
    processed_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class DeadLetter(SQLModel, table=True):
    """A message this service gave up on: the operator's record of a critical alert."""

    __tablename__ = "dead_letters"
    event_id: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=64)
    order_id: str | None = Field(default=None, max_length=64, index=True)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    attempts: int = 0
    compensation: bool = False
    dead_lettered_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class CopyRecord(SQLModel, table=True):
    """A copy this service made of a delivery (a retry rung's, a dead letter's), written in the
    transaction that decided it: the proof, checked when the copy comes back, of the sender the
    copy names (tasks.adapter). The broker vouches only for the copy's publisher, this service, so
    a copy with no record here (made by anyone else holding its broker password) is refused."""

    __tablename__ = "copies"
    event_id: str = Field(primary_key=True, max_length=64)  # the delivery's task id
    # sha256 over the original sender, the message name and its arguments (choreo.app.copies)
    digest: str = Field(primary_key=True, max_length=64)
    sender: str = Field(max_length=32)
    kind: str = Field(max_length=16)  # retry | dead_letter: the first copy made of it
    attempt: int = 0  # that copy's rung (a dead letter's: the attempts it had)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


# --- order ----------------------------------------------------------------------------


class OrderEvent(SQLModel, table=True):
    """The order event store: append-only; (order_id, version) unique = optimistic locking."""

    __tablename__ = "order_events"
    __table_args__ = (UniqueConstraint("order_id", "version", name="uq_order_version"),)
    position: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(max_length=64, index=True)
    version: int
    type: str = Field(max_length=64)
    schema_version: int = 1
    data: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    cause_event_id: str | None = Field(default=None, max_length=64)
    recorded_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class OrderView(SQLModel, table=True):
    """Read model: one row per order, a projection of order_events."""

    __tablename__ = "order_view"
    order_id: str = Field(primary_key=True, max_length=64)
    state: str = Field(max_length=32, index=True)
    reason: str | None = Field(default=None, max_length=64)
    customer_id: str = Field(max_length=64)
    amount_cents: int = 0
    card_token: str = ""
    address: str = ""
    items: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    charged_cents: int = 0
    refunded_cents: int = 0
    version: int = 0
    last_position: int = 0
    placed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    paid_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    reserved_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    shipped_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    ended_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


# --- payment --------------------------------------------------------------------------


class Charge(SQLModel, table=True):
    __tablename__ = "charges"
    order_id: str = Field(primary_key=True, max_length=64)
    charge_id: str = Field(max_length=64)
    amount_cents: int
    card_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class Refund(SQLModel, table=True):
    __tablename__ = "refunds"
    order_id: str = Field(primary_key=True, max_length=64)
    refund_id: str | None = Field(default=None, max_length=64)
    amount_cents: int
    reason: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class PaymentDecision(SQLModel, table=True):
    """A declined charge is a decision too: recorded so a redelivery does not ask again."""

    __tablename__ = "payment_decisions"
    order_id: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(max_length=32)
    reason: str | None = Field(default=None, max_length=64)


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
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class GatewayAttempt(SQLModel, table=True):
    __tablename__ = "gateway_attempts"
    idempotency_key: str = Field(primary_key=True, max_length=96)
    attempts: int = 0


# --- inventory ------------------------------------------------------------------------


class Stock(SQLModel, table=True):
    __tablename__ = "stock"
    sku: str = Field(primary_key=True, max_length=64)
    initial: int
    available: int
    reserved: int = 0


class Reservation(SQLModel, table=True):
    __tablename__ = "reservations"
    order_id: str = Field(primary_key=True, max_length=64)
    reservation_id: str = Field(max_length=64)
    items: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16)  # reserved | released
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    released_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class StockDecision(SQLModel, table=True):
    """Out-of-stock is remembered, so a late or duplicate request cannot reserve after it."""

    __tablename__ = "stock_decisions"
    order_id: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(max_length=32)


# --- shipment -------------------------------------------------------------------------


class Shipment(SQLModel, table=True):
    __tablename__ = "shipments"
    order_id: str = Field(primary_key=True, max_length=64)
    shipment_id: str | None = Field(default=None, max_length=64)
    tracking_code: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=16)  # created | failed
    reason: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


# --- notification ---------------------------------------------------------------------


class Notification(SQLModel, table=True):
    __tablename__ = "notifications"
    order_id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=32)
    customer_id: str = Field(max_length=64)
    email: str | None = Field(default=None, max_length=128)
    body: str = Field(sa_column=Column(Text, nullable=False))
    sent_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


# --- the operator's records ---------------------------------------------------------------


class ReplayRecord(SQLModel, table=True):
    """One dead letter an operator replayed (`choreo dlq replay --execute`): when, which message,
    by whom, and what came of it. Written (durably) after the broker confirmed the replayed
    copy and before the dead letter is acked."""

    __tablename__ = "dlq_replays"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=36, index=True)  # one `--execute` run
    replayed_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    by: str = Field(max_length=128)
    domain: str = Field(max_length=32, index=True)
    event_id: str = Field(max_length=64, index=True)
    message_id: str | None = Field(default=None, max_length=64)
    type: str = Field(max_length=64)
    order_id: str | None = Field(default=None, max_length=64)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    # The consumer's inbox already held this event when it was replayed: the copy is absorbed.
    already_processed: bool | None = None  # None: could not check
    outcome: str = Field(max_length=32)  # replayed | unroutable | not_confirmed


# --- orchestrator (orchestrated saga mode only) -----------------------------------------


class SagaState(SQLModel, table=True):
    """The orchestrator's saga, persisted after every step so a killed orchestrator resumes."""

    __tablename__ = "sagas"
    order_id: str = Field(primary_key=True, max_length=64)
    status: str = Field(max_length=16, index=True)
    order: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    card_token: str = ""
    done: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    undone: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    failure: str | None = Field(default=None, max_length=64)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


# --- user -----------------------------------------------------------------------------


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    email: str = Field(max_length=128)


COMMON: list[type[SQLModel]] = [Outbox, Inbox, DeadLetter, CopyRecord]
TABLES: dict[str, list[type[SQLModel]]] = {
    "order": [*COMMON, OrderEvent, OrderView],
    "payment": [*COMMON, Charge, Refund, PaymentDecision],
    "gateway": [GatewayLedger, GatewayAttempt],
    "inventory": [*COMMON, Stock, Reservation, StockDecision],
    "shipment": [*COMMON, Shipment],
    "notification": [*COMMON, Notification],
    "user": [Customer],
    "orchestrator": [*COMMON, SagaState],
    "operator": [ReplayRecord],
}


def table_of(model: type[SQLModel]) -> Table:
    """A table class's Core table, for prebuilt statements (SQLModel sets it on the class but
    does not declare it to type checkers)."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table
