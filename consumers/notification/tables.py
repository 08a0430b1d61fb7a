"""The notification service's own tables; its database also holds models.tables.COMMON."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from models.tables import ts_column, utcnow


class Notification(SQLModel, table=True):
    __tablename__ = "notifications"
    order_id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=32)
    customer_id: str = Field(max_length=64)
    email: str | None = Field(default=None, max_length=128)
    body: str = Field(sa_column=Column(Text, nullable=False))
    sent_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


TABLES: list[type[SQLModel]] = [Notification]
