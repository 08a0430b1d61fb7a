"""The orchestrator service's own tables; its database also holds models.tables.COMMON."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from models.tables import ts_column, utcnow


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
    updated_at: datetime = Field(default_factory=utcnow, sa_column=ts_column(nullable=False))


TABLES: list[type[SQLModel]] = [SagaState]
