"""The order service's own tables; its database also holds models.tables.COMMON."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.tables import ts_column, utcnow


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
    recorded_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


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
    placed_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    paid_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    reserved_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    shipped_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    ended_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


class OrderDeadline(SQLModel, table=True):
    """The durable timer of an open saga: one row per order still moving forward, written in the
    same transaction as the event that starts its step, deleted by the event that ends the wait.

    `due_at` is the earlier of the step's and the saga's deadline, and `step` names which
    (payment, inventory, shipment or saga). Every order worker drains due rows (docs/deadlines.md).
    """

    __tablename__ = "order_deadlines"
    order_id: str = Field(primary_key=True, max_length=64)
    step: str = Field(max_length=16)
    step_due_at: datetime = Field(sa_column=ts_column(nullable=False))
    saga_due_at: datetime = Field(sa_column=ts_column(nullable=False))
    due_at: datetime = Field(sa_column=ts_column(nullable=False, index=True))
    fired: int = 0  # how many times it fired (a firing whose saga did not move fires again)
    traceparent: str | None = Field(default=None, max_length=64)  # the saga's trace


TABLES: list[type[SQLModel]] = [OrderEvent, OrderView, OrderDeadline]
