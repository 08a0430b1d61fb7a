"""Durable timers: the order worker that owns a due timer is killed (os._exit, like kill -9) just
before, while and after it fires; the broker drops every connection and Redis is wiped while
timers are pending. Each timer fires, once in effect: the order is cancelled once, each
compensation runs once, the customer is told once, and the late answer is undone.

The shipment worker is stopped on purpose, so every order here waits on shipment past its
deadline. The order worker runs with the crash hook (tests/e2e/crash_hook.py); its marker is
armed only once the order waits, so the next thing the worker does for it is the timer.

  timer_before_commit  the sweep's transaction holds the firing, uncommitted -> fires again
  timer_after_commit   the firing committed to the outbox, unpublished       -> the relay sends it
  timer_after_publish  published, not marked sent                             -> sent twice, one
                                                                                  absorbed
  before_commit        the order's batch handling it ran, uncommitted         -> redelivered
  after_commit         the cancellation committed, nothing published          -> redelivered, the
                                                                                  relay publishes
"""

from __future__ import annotations

import os

import pytest

from tasks.faults import HOOK_ENV
from tests.e2e.test_deadlines_on_stack import books, short_deadlines, timeline
from tests.helpers import queues_idle, wait_for

pytestmark = [
    pytest.mark.e2e,
    # The crash points are the worker's, not the database's: once is enough. The PostgreSQL pass
    # fires timers through tests/e2e/test_deadlines_on_stack.py (FOR UPDATE SKIP LOCKED).
    pytest.mark.skipif(
        bool(os.environ.get("CHOREO_TEST_DATABASE_SERVER")), reason="runs in the SQLite pass only"
    ),
]


@pytest.fixture(scope="module")
def durable(settings, tmp_path_factory):
    from choreo.ops.stack import process_names
    from tests.e2e.conftest import start_stack

    s, env = short_deadlines(settings, tmp_path_factory.mktemp("timers"))
    stack = start_stack(s, env=env, names=[n for n in process_names(s) if n != "flower"])
    yield s, stack, env
    for name in reversed(process_names(s)):
        stack.stop(name)


def state_of(s, order_id: str) -> tuple[str, str | None] | None:
    from choreo.app.queries import order_states

    return order_states(s, [order_id]).get(order_id)


def end_state(s, stack, order_ids: list[str]) -> None:
    """The shipment service back: every late answer undone, and each order cancelled once by
    its shipment deadline, with one refund, one release, one notification; the audit passes."""
    from choreo.ops.audit import run_audit
    from choreo.ops.stack import wait_consuming

    stack.start("worker-shipment")
    wait_consuming(s, stack, ["worker-shipment"], timeout=60)
    for order_id in order_ids:
        wait_for(lambda o=order_id: "ShipmentWithdrawn" in timeline(s, o), 60, what="the undoing")
    queues_idle(s, quiet_for=1.0)
    for order_id in order_ids:
        events = timeline(s, order_id)
        assert state_of(s, order_id) == ("CANCELLED", "timeout:shipment")
        for once in ("DeadlinePassed", "OrderCancelled", "PaymentRefunded", "StockReleased"):
            assert events.count(once) == 1, f"{order_id}: {once} in {events}"
        assert "ShipmentDispatched" in events[events.index("DeadlinePassed") :]  # the late one
        held = books(s, order_id)
        assert held["charged"] == held["refunded"] > 0
        assert (held["reservation"], held["shipment"]) == ("released", "cancelled")
        assert held["notifications"] == ["cancelled"]
    failed = {c.name: c.problems for c in run_audit(s) if not c.passed}
    assert failed == {}, failed


@pytest.mark.parametrize(
    "point",
    [
        "timer_before_commit",
        "timer_after_commit",
        "timer_after_publish",
        "before_commit",
        "after_commit",
    ],
)
def test_the_timer_s_owner_killed_around_its_firing_fires_it_once_in_effect(
    durable, point, tmp_path
):
    from choreo.ops.stack import Stack, wait_consuming
    from choreo.ops.workload import publish_orders

    s, stack, env = durable
    marker = tmp_path / "crash-once"
    faulty = Stack(
        s,
        {
            **env,
            HOOK_ENV: "tests.e2e.crash_hook",
            "CHOREO_FAULT_CRASH_POINT": point,
            "CHOREO_FAULT_CRASH_DOMAIN": "order",
            "CHOREO_FAULT_MARKER": str(marker),
        },
    )
    stack.stop_on_purpose("worker-shipment")
    stack.stop("worker-order")
    faulty.start("worker-order")
    try:
        wait_consuming(s, faulty, ["worker-order"], timeout=60)
        ((order_id, _),) = publish_orders(s, ["completed"], seed=None)
        wait_for(lambda: state_of(s, order_id) == ("RESERVED", None), 30, what="RESERVED")
        marker.write_text("armed")  # the next thing the order worker does: the timer
        wait_for(lambda: not marker.exists(), 30, what=f"the crash at {point}")
        wait_for(lambda: faulty.pid("worker-order") is None, 30, what="the order worker to die")
        assert state_of(s, order_id)[0] in ("RESERVED", "CANCELLED")
        faulty.start("worker-order")  # the supervisor's restart; the marker is gone
        wait_for(
            lambda: state_of(s, order_id) == ("CANCELLED", "timeout:shipment"),
            30,
            what="the deadline's cancellation",
        )
    finally:
        faulty.stop("worker-order")
        stack.start("worker-order")
    end_state(s, stack, [order_id])


def test_timers_pending_through_a_broker_restart_and_a_redis_wipe_fire_once(
    durable, isolated_redis, sandbox
):
    from choreo.ops.stack import rabbitmqctl
    from choreo.ops.workload import publish_orders

    s, stack, _ = durable
    stack.stop_on_purpose("worker-shipment")
    ids = [o for o, _ in publish_orders(s, ["completed"] * 4, seed=None)]
    wait_for(
        lambda: all(state_of(s, o) == ("RESERVED", None) for o in ids), 30, what="all RESERVED"
    )
    # Timers pending: every connection of the run's vhost dropped (as the chaos harness restarts
    # the broker), and every Redis key of the run gone (idempotency keys, counters).
    rabbitmqctl("close_all_connections", "--vhost", sandbox.vhost, "choreo test: broker restart")
    keys = list(isolated_redis.scan_iter(f"{s.redis_prefix}:*"))
    if keys:
        isolated_redis.delete(*keys)
    for o in ids:
        wait_for(
            lambda o=o: state_of(s, o) == ("CANCELLED", "timeout:shipment"),
            60,
            what="each pending timer to fire after the restart",
        )
    end_state(s, stack, ids)
