"""Flower still sees each message of a batch as its own task: received, started, then succeeded,
retried or failed, from the worker that held it (Celery's own event receiver, as Flower reads
them)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from tests.helpers import settled, wait_for

pytestmark = pytest.mark.e2e


def test_each_message_is_its_own_task_in_the_event_stream(settings, stack):
    from choreo.ops.workload import publish_orders
    from tasks.app import make_app

    app = make_app("client", settings, service="flower")  # with Flower's broker user and grants
    events: list[dict] = []
    conn = app.connection_for_read()
    receiver = app.events.Receiver(conn, handlers={"*": events.append})
    listener = threading.Thread(
        target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True
    )
    listener.start()
    try:
        time.sleep(1.5)  # its event queue declared and bound before anything happens
        sent = dict(publish_orders(settings, ["completed", "flaky", "needs_attention"], seed=None))
        settled(settings, list(sent), timeout=120)
        # A task's last event follows its ack, which follows the publish that settled the order.
        wait_for(lambda: _all_ended(_tasks(events), sent), 30, what="every task's final event")
    finally:
        receiver.should_stop = True
        listener.join(5)
        conn.release()
        app.close()

    by_scenario = {scenario: _tasks(events)[order_id] for order_id, scenario in sent.items()}
    names, completed = by_scenario["completed"]
    assert sorted(names.values()) == sorted(
        [
            "place_order",
            "order.placed",
            "payment.completed",
            "payment.completed",
            "inventory.reserved",
            "inventory.reserved",
            "shipment.created",
            "order.completed",
        ]
    )
    assert all(
        seq == ["task-received", "task-started", "task-succeeded"] for seq in completed.values()
    ), completed
    _, flaky = by_scenario["flaky"]
    assert any(
        seq[:3] == ["task-received", "task-started", "task-retried"] and seq[-1] == "task-succeeded"
        for seq in flaky.values()
    ), flaky
    _, failed = by_scenario["needs_attention"]
    assert any(seq[-1] == "task-failed" for seq in failed.values()), failed


def _tasks(events: list[dict]) -> dict[str, tuple[dict, dict]]:
    """Per order id: ({task: name}, {task: [event types]}), a task being (message id, worker):
    an event routed to two domains is two deliveries."""
    order_of, name_of, kinds = {}, {}, defaultdict(list)
    for e in list(events):
        if not e["type"].startswith("task-"):
            continue
        key = (e["uuid"], e["hostname"])
        kinds[key].append(e["type"])
        if e["type"] == "task-received":
            order_of[key] = next(
                (
                    w[len("order=") :]
                    for w in (e.get("args") or "").split()
                    if w.startswith("order=")
                ),
                None,
            )
            name_of[key] = e["name"]
    out: dict = defaultdict(lambda: ({}, {}))
    for key, order_id in order_of.items():
        out[order_id][0][key] = name_of[key]
        out[order_id][1][key] = kinds[key]
    return out


def _all_ended(tasks: dict, sent: dict[str, str]) -> bool:
    """Every task of every order has its final event (the refused refund's being task-failed)."""
    final = ("task-succeeded", "task-failed")
    return all(tasks[o][1] and all(seq[-1] in final for seq in tasks[o][1].values()) for o in sent)
