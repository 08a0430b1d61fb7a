"""Flower still sees each message of a batch as its own task: received, started, then succeeded,
retried or failed, from the worker that held it (Celery's own event receiver, as Flower reads
them); and Flower itself keeps one record per (message, consuming domain), with its own outcome."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import httpx
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
    """Per order id: ({task: name}, {task: [event types]}), a task being (uuid, worker): an event
    routed to two domains is two deliveries, `<event id>@<domain>` each."""
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


def test_flower_keeps_one_task_per_consuming_domain_each_with_its_outcome(settings, stack):
    # needs_attention: out of stock, and the refund is refused. inventory.failed is heard by
    # payment (the refund: dead-lettered, FAILURE) and by order (a fact: SUCCESS). One event id,
    # two records in Flower (it keys them by uuid), never one merged record.
    from choreo.ops.workload import publish_orders

    stack.start("flower")
    api = f"http://127.0.0.1:{settings.flower_port}/api/tasks"
    with httpx.Client(timeout=5, trust_env=False) as client:

        def tasks_of(order_id: str) -> list[dict]:
            try:
                resp = client.get(api)
            except httpx.HTTPError:
                return []
            if resp.status_code != 200:
                return []
            return [t for t in resp.json().values() if f"order={order_id} " in (t["args"] or "")]

        # Flower sees events from the moment its receiver is bound: an order it shows says so.
        def first_order_seen():
            ((warm_up, _),) = publish_orders(settings, ["completed"], seed=None)
            return wait_for(lambda: tasks_of(warm_up), 20, what="Flower's first task")

        wait_for(lambda: _answers(client, api), 60, what="Flower's API")
        first_order_seen()
        ((order_id, _),) = publish_orders(settings, ["needs_attention"], seed=None)
        settled(settings, [order_id], timeout=120)
        done = ("SUCCESS", "FAILURE")

        def both_ended():
            ts = [t for t in tasks_of(order_id) if t["name"] == "inventory.failed"]
            return len(ts) == 2 and all(t["state"] in done for t in ts) and ts

        failed = wait_for(both_ended, 30, what="both inventory.failed tasks ended in Flower")

    by_domain = {t["uuid"].rsplit("@", 1)[1]: t for t in failed}
    assert set(by_domain) == {"payment", "order"}, failed
    event_ids = {t["uuid"].rsplit("@", 1)[0] for t in failed}
    assert len(event_ids) == 1, failed  # one message, two deliveries
    (event_id,) = event_ids
    assert all(f"event={event_id}" in t["args"] for t in failed)
    assert by_domain["payment"]["state"] == "FAILURE", by_domain["payment"]
    assert by_domain["payment"]["worker"].startswith("payment@")
    assert by_domain["order"]["state"] == "SUCCESS", by_domain["order"]
    assert by_domain["order"]["worker"].startswith("order@")
    # Each record's times are its own delivery's: received before it ended.
    for t in failed:
        assert t["received"] <= (t["succeeded"] or t["failed"]), t


def _answers(client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def test_inspect_shows_each_workers_queue_and_refuses_to_add_one(settings, stack):
    # What Flower's Queues tab and `celery inspect active_queues` read: the batch consumer's
    # queue (Celery's own consumer reads none). add_consumer would hand a queue to Celery's own
    # consumer, past the protocol guard and the sender check: refused.
    from choreo.messaging.topology import Names
    from tasks.app import make_app

    names = Names(settings.namespace)
    app = make_app("client", settings, service="flower")
    try:
        replies = wait_for(
            lambda: (
                (r := app.control.inspect(timeout=3).active_queues() or {})
                and len(r) >= len(settings.domains)
                and r
            ),
            30,
            what="every worker's active_queues reply",
        )
        consumed = {node.split("@")[0]: [q["name"] for q in qs] for node, qs in replies.items()}
        for domain in settings.domains:
            assert consumed[domain] == [names.queue(domain)], consumed
        answers = app.control.add_consumer(names.queue("payment"), reply=True, timeout=3)
        assert answers and all("error" in a for reply in answers for a in reply.values()), answers
    finally:
        app.close()
