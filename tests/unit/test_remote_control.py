"""Remote control that no broker fault can end (tasks.remote), on kombu's in-memory transport: each
connection's mailbox queue has a name of its own that the domain user's grant allows, hears
broadcasts and answers under the node's name; a refused declare is tried again, not raised.
(A real cluster's node faults: tests/chaos/test_worker_failover.py.)"""

from __future__ import annotations

import re
from types import SimpleNamespace

import amqp
import pytest
from celery import Celery
from kombu import Connection
from kombu.asynchronous.timer import Timer

from choreo.messaging import access
from config.settings import Settings
from tasks.remote import ConnectionMailbox, RemoteControl


@pytest.fixture
def worker():
    """What the step reads of Celery's consumer: its app, node name, connection, errors and
    timer."""
    app = Celery("t", broker="memory://", set_as_current=False)
    conn = Connection("memory://")
    c = SimpleNamespace(
        app=app,
        hostname="payment-2@host.example",
        connection=conn,
        conninfo=conn,
        controller=SimpleNamespace(use_eventloop=True),
        timer=Timer(),
        channel_errors=conn.channel_errors,
        connection_errors=conn.connection_errors,
        on_decode_error=lambda message, exc: None,
    )
    yield c
    conn.release()


def test_each_connection_declares_a_mailbox_of_its_own_that_the_grant_allows(worker, tmp_path):
    box = ConnectionMailbox(worker)
    names = []
    for _ in range(2):  # a start per connection
        box.start(worker)
        names.append(box.queue_name)
        box.stop(worker)
    assert names[0] != names[1]
    assert all(
        re.fullmatch(r"payment-2@host\.example\.[0-9a-f]{8}\.celery\.pidbox", n) for n in names
    ), names
    grant = access.grants(
        Settings(run_dir=tmp_path / "run", data_dir=tmp_path / "data"),
        {"payment": {"order.placed"}},
    )["payment"]
    assert all(
        re.fullmatch(getattr(grant, p), n) for p in ("configure", "read", "write") for n in names
    )


def test_a_broadcast_reaches_the_mailbox_and_a_call_is_answered_under_the_node_name(worker):
    box = ConnectionMailbox(worker)
    heard, replies = [], []
    box.node.handle_message = lambda body, message=None: heard.append(body["method"])
    box.node.reply = lambda data, **kw: replies.append(data)  # the reply's publish is kombu's
    box.start(worker)
    worker.app.control.broadcast(
        "ping", reply=False, connection=worker.connection
    )  # Flower's fanout
    worker.connection.drain_events(timeout=1)
    assert heard == ["ping"]
    box.node.dispatch(
        "ping", reply_to={"exchange": "reply.celery.pidbox", "routing_key": "flower"}, ticket="t"
    )
    box.stop(worker)
    assert replies == [{"payment-2@host.example": {"ok": "pong"}}]


def test_a_refused_declare_is_tried_again_later_and_never_raised(worker, monkeypatch):
    step = RemoteControl(worker)
    tries = []

    def start(c):
        tries.append(c)
        if len(tries) < 3:
            raise amqp.ResourceLocked(
                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue"
            )

    monkeypatch.setattr(step.box, "start", start)
    step.start(worker)  # refused: no exception, a retry on the timer
    assert len(tries) == 1 and step.retry is not None and step.refused == 1
    step.retry()  # the timer fires: refused again, a later retry
    assert len(tries) == 2 and step.refused == 2 and step.retry is not None
    step.retry()  # accepted
    assert len(tries) == 3 and step.refused == 0 and step.retry is None


def test_a_connection_error_propagates_so_the_consumer_reconnects(worker, monkeypatch):
    step = RemoteControl(worker)

    def start(c):
        raise amqp.RecoverableConnectionError("connection lost")

    monkeypatch.setattr(step.box, "start", start)
    with pytest.raises(amqp.RecoverableConnectionError):
        step.start(worker)
    assert step.retry is None


def test_stopping_cancels_a_pending_retry(worker, monkeypatch):
    step = RemoteControl(worker)

    def start(c):
        raise amqp.NotFound("NOT_FOUND - no queue")  # a bind racing a cleanup, say

    monkeypatch.setattr(step.box, "start", start)
    step.start(worker)
    entry = step.retry
    step.stop(worker)
    assert step.retry is None and entry.canceled
