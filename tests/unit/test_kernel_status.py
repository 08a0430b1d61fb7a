"""`choreo status` with the database away: whatever SQLAlchemy raises (a driver error, a pool
timeout, a bad URL, an empty message) is one status line, never a crash. Every other source is a
fake: no services."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import exc as sa

from choreo.ops import status
from config.settings import Settings


class _Unreachable:
    def __init__(self, *args, **kwargs) -> None:
        raise ConnectionRefusedError("no broker in a unit test")


class _NoStack:
    def __init__(self, settings: Settings) -> None:
        pass

    def running(self) -> dict[str, int | None]:
        return {}

    def held_names(self) -> list[str]:
        return []


def _no_redis(settings: Settings):
    raise redis.ConnectionError("no Redis in a unit test")


@pytest.fixture
def database_raises(monkeypatch):
    """gather_status with the database raising what the test sets, everything else away."""
    raised: list[BaseException] = []

    def system_summary(settings: Settings):
        raise raised[0]

    monkeypatch.setattr(status, "system_summary", system_summary)
    monkeypatch.setattr(status, "BrokerAdmin", _Unreachable)
    monkeypatch.setattr(status, "Stack", _NoStack)
    monkeypatch.setattr(status, "process_health", lambda settings, pids: {})
    monkeypatch.setattr(status.prometheus, "running", lambda settings: None)
    monkeypatch.setattr(status.prometheus, "url", lambda settings: "http://127.0.0.1:1")
    monkeypatch.setattr(status, "redis_client", _no_redis)
    return raised


@pytest.mark.parametrize(
    "error, line",
    [
        # A DBAPIError: the driver's error, first line only.
        (
            sa.OperationalError(
                "SELECT 1", {}, ConnectionRefusedError("connection refused\nIs the server up?")
            ),
            "ConnectionRefusedError: connection refused",
        ),
        # No .orig: the pool's own error, and a URL SQLAlchemy cannot use.
        (
            sa.TimeoutError("QueuePool limit of size 4 overflow 4 reached"),
            "TimeoutError: QueuePool limit of size 4 overflow 4 reached",
        ),
        (sa.ArgumentError("Could not parse SQLAlchemy URL"), "ArgumentError: Could not parse"),
        # A driver error with nothing to say.
        (sa.OperationalError("SELECT 1", {}, OSError()), "OSError"),
    ],
)
def test_a_database_error_is_one_status_line(database_raises, error, line):
    database_raises.append(error)
    data = status.gather_status(Settings())
    assert data["database_error"].startswith(line)
    assert "\n" not in data["database_error"]
    assert data["orders"] == {"total": 0, "by_state_reason": []}
    # The rest of the status is still gathered.
    assert data["queues"] == [] and "ConnectionRefusedError" in data["broker_error"]
    assert data["metrics"] == {} and "ConnectionError" in data["redis_error"]
    assert data["processes"] == {} and data["prometheus"]["running"] is False
