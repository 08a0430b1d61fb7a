"""The shipment service's own tables; its database also holds models.tables.COMMON."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from models.tables import ts_column, utcnow


class Shipment(SQLModel, table=True):
    __tablename__ = "shipments"
    order_id: str = Field(primary_key=True, max_length=64)
    shipment_id: str | None = Field(default=None, max_length=64)
    tracking_code: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=16)  # created | failed | cancelled
    reason: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


TABLES: list[type[SQLModel]] = [Shipment]
