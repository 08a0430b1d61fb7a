"""Shared state says whose and since when: the counters' reset time, and which checkout holds a
namespace (real Redis, a prefix of each test's own)."""

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


def test_a_second_checkout_is_refused_until_the_first_gives_the_namespace_back(own_prefix):
    from choreo.ops import owner

    here = own_prefix.model_copy(update={"run_dir": own_prefix.run_dir / "clone-a"})
    there = own_prefix.model_copy(update={"run_dir": own_prefix.run_dir / "clone-b"})
    assert owner.claim(here) is None
    assert owner.claim(here) is None  # its own claim again: `choreo up` twice
    assert owner.claim(there) == owner.checkout(here)
    assert not owner.release(there)  # not its claim to give back
    assert owner.claim(there) == owner.checkout(here)
    assert owner.release(here)  # `choreo down`
    assert owner.claim(there) is None
    assert owner.claim(here, force=True) is None  # --take-namespace
    assert owner.claim(there) == owner.checkout(here)
    # Another namespace has broker users (and a claim) of its own: never refused.
    shop = there.model_copy(update={"namespace": "shop"})
    assert owner.claim(shop) is None


def test_choreo_up_from_another_checkout_fails_in_one_line_before_starting_anything(
    own_prefix, monkeypatch
):
    from click.testing import CliRunner

    from choreo.cli import cli
    from choreo.infra.redis_client import redis_client
    from choreo.ops import owner
    from config.settings import get_settings

    redis_client(own_prefix).set(owner.key(own_prefix), "/home/someone/other-clone/run")
    monkeypatch.setenv("CHOREO_REDIS_PREFIX", own_prefix.redis_prefix)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["up", "--no-prometheus"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code != 0
    line = result.output.strip()
    assert len(line.splitlines()) == 1, result.output
    assert "held by the checkout at /home/someone/other-clone/run" in line, result.output
    assert "CHOREO_NAMESPACE=" in line and "--take-namespace" in line
    assert "stack up" not in result.output
