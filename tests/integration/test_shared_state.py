"""Shared state says whose and since when: the counters' reset time (real Redis)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture()
def own_prefix(settings):
    """A Redis prefix of this test's own, inside the run's."""
    return settings.model_copy(
        update={"redis_prefix": f"{settings.redis_prefix}:state-{uuid.uuid4().hex[:8]}"}
    )


def test_counters_say_since_when_and_a_reset_starts_them_from_zero(own_prefix):
    from choreo.infra.metrics import Metrics
    from choreo.infra.redis_client import redis_client
    from choreo.ops.status import gather_status

    metrics = Metrics(redis_client(own_prefix), own_prefix.redis_prefix)
    metrics.incr("processed", "order", 1560)  # an earlier stack's, never reset
    assert metrics.since() is None
    data = gather_status(own_prefix)
    assert data["metrics"]["processed"] == {"order": 1560} and data["metrics_since"] is None

    stamp = metrics.reset(datetime(2026, 12, 7, 7, 17, 35, tzinfo=UTC))
    assert stamp == "2026-12-07T07:17:35+00:00"
    metrics.incr("processed", "order")
    data = gather_status(own_prefix)
    assert data["metrics"]["processed"] == {"order": 1}
    assert data["metrics_since"] == stamp
