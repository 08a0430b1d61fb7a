"""The payment service's own tables; its database also holds models.tables.COMMON."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from models.tables import ts_column, utcnow


class Charge(SQLModel, table=True):
    __tablename__ = "charges"
    order_id: str = Field(primary_key=True, max_length=64)
    charge_id: str = Field(max_length=64)
    amount_cents: int
    card_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


class Refund(SQLModel, table=True):
    __tablename__ = "refunds"
    order_id: str = Field(primary_key=True, max_length=64)
    refund_id: str | None = Field(default=None, max_length=64)
    amount_cents: int
    reason: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


class PaymentDecision(SQLModel, table=True):
    """A declined charge is a decision too: recorded so a redelivery does not ask again."""

    __tablename__ = "payment_decisions"
    order_id: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(max_length=32)
    reason: str | None = Field(default=None, max_length=64)


TABLES: list[type[SQLModel]] = [Charge, Refund, PaymentDecision]
