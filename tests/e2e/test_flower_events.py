"""Flower still sees each message of a batch as its own task: received, started, then succeeded,
retried or failed, from the worker that held it (Celery's own event receiver, as Flower reads them)."""
from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from tests.helpers import settled

pytestmark = pytest.mark.e2e


def test_each_message_is_its_own_task_in_the_event_stream(settings, stack):
    from choreo.ops.workload import publish_orders
    from tasks.app import make_app

    app = make_app("client", settings)
    events: list[dict] = []
    conn = app.connection_for_read()
    receiver = app.events.Receiver(conn, handlers={"*": events.append})
    listener = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True)
    listener.start()
    try:
        time.sleep(1.5)  # its event queue declared and bound before anything happens
        sent = dict(publish_orders(settings, ["completed", "flaky", "needs_attention"], seed=None))
        settled(settings, list(sent), timeout=120)
        time.sleep(1.0)  # the last succeeded events are flushed after their acks
    finally:
        receiver.should_stop = True
        listener.join(5)
        conn.release()
        app.close()

    # One task per (message id, worker): an event routed to two domains is two deliveries.
    order_of, name_of, kinds = {}, {}, defaultdict(list)
    for e in events:
        if not e["type"].startswith("task-"):
            continue
        key = (e["uuid"], e["hostname"])
        kinds[key].append(e["type"])
        if e["type"] == "task-received":
            order_of[key] = next((w[len("order="):] for w in (e.get("args") or "").split() if w.startswith("order=")), None)
            name_of[key] = e["name"]

    def tasks_of(order_id):
        return {k: kinds[k] for k, o in order_of.items() if o == order_id}

    by_scenario = {scenario: tasks_of(order_id) for order_id, scenario in sent.items()}
    completed = by_scenario["completed"]
    assert sorted(name_of[k] for k in completed) == sorted(
        ["place_order", "order.placed", "payment.completed", "payment.completed", "inventory.reserved",
         "inventory.reserved", "shipment.created", "order.completed"])
    assert all(seq == ["task-received", "task-started", "task-succeeded"] for seq in completed.values()), completed
    flaky = by_scenario["flaky"]
    assert any(seq[:3] == ["task-received", "task-started", "task-retried"] and seq[-1] == "task-succeeded"
               for seq in flaky.values()), flaky
    failed = by_scenario["needs_attention"]
    assert any(seq[-1] == "task-failed" for seq in failed.values()), failed
