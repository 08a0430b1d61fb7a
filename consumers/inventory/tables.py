"""The inventory service's own tables; its database also holds models.tables.COMMON."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, Session, SQLModel

from config.catalog import INITIAL_STOCK
from models.tables import ts_column, utcnow


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
    created_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))
    released_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))


class StockDecision(SQLModel, table=True):
    """Out-of-stock is remembered, so a late or duplicate request cannot reserve after it."""

    __tablename__ = "stock_decisions"
    order_id: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(max_length=32)


TABLES: list[type[SQLModel]] = [Stock, Reservation, StockDecision]


def seed(session: Session) -> None:
    """The sandbox's opening stock (config.catalog), written once: choreo.app.bootstrap.prepare."""
    for sku, qty in INITIAL_STOCK.items():
        if session.get(Stock, sku) is None:
            session.add(Stock(sku=sku, initial=qty, available=qty, reserved=0))
