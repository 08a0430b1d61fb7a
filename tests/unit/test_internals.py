"""What tasks.internals relies on in the installed Celery, kombu and py-amqp, checked one by one:
an upgrade that removes or renames any of it fails here, loudly, instead of in a running worker.
(The documented extension points the worker uses are checked too, where their shape matters.)"""

from __future__ import annotations

import collections
import inspect
import socket
from types import SimpleNamespace

import amqp.transport
import celery
import kombu
import pytest
from celery import bootsteps
from celery.app.amqp import Queues
from celery.utils.imports import symbol_by_name
from celery.worker import state
from celery.worker.consumer import Consumer
from celery.worker.consumer.events import Events
from celery.worker.worker import WorkController
from kombu import Queue, compression
from kombu.asynchronous import Hub

from config.settings import Settings
from tasks.internals import DELAYED_DELIVERY, ChoreoConsumer, count_task, frames_waiting

SETTINGS = Settings(broker_url="amqp://guest:guest@127.0.0.1:1//")


def test_the_versions_these_checks_were_written_for_are_the_installed_ones_or_newer():
    assert tuple(int(p) for p in celery.__version__.split(".")[:2]) >= (5, 7)
    assert tuple(int(p) for p in kombu.__version__.split(".")[:2]) >= (5, 7)


# 1. ChoreoConsumer: Celery's consumer less DelayedDelivery, its events unconfirmed.


def test_celery_still_has_a_delayed_delivery_step_and_ours_is_its_blueprint_less_that_step():
    steps = Consumer.Blueprint.default_steps
    assert DELAYED_DELIVERY in steps, "Celery renamed or dropped DelayedDelivery: re-check"
    assert issubclass(symbol_by_name(DELAYED_DELIVERY), bootsteps.Step)
    assert ChoreoConsumer.Blueprint.default_steps == [s for s in steps if s != DELAYED_DELIVERY]


def test_the_events_step_opens_its_connection_through_the_consumers_connection_for_write():
    assert "c.connection_for_write(heartbeat=c.amqheartbeat)" in inspect.getsource(Events.start)
    base = inspect.signature(Consumer.connection_for_write)
    assert list(base.parameters) == list(
        inspect.signature(ChoreoConsumer.connection_for_write).parameters
    )
    assert "ensure_connected" in vars(Consumer)


def test_the_event_connection_skips_confirms_while_the_apps_other_connections_keep_them():
    from tasks.app import make_app

    app = make_app("order", SETTINGS)
    consumer = SimpleNamespace(app=app, ensure_connected=lambda conn: conn)  # nothing connects
    events = ChoreoConsumer.connection_for_write(consumer, heartbeat=30)
    assert events.transport_options["confirm_publish"] is False
    assert events.heartbeat == 30
    assert app.connection_for_write().transport_options["confirm_publish"] is True


def test_a_domain_worker_runs_choreos_consumer():
    from tasks.app import make_app

    assert make_app("order", SETTINGS).conf.worker_consumer == "tasks.internals:ChoreoConsumer"


# 2. count_task: the counters `celery inspect stats` reports.


def test_the_workers_task_counters_are_where_stats_reads_them(monkeypatch):
    assert isinstance(state.total_count, collections.Counter)
    assert isinstance(state.all_total_count, list) and isinstance(state.all_total_count[0], int)
    assert "self.info()" in inspect.getsource(WorkController.stats)
    assert "'total': self.state.total_count" in inspect.getsource(WorkController.info)
    monkeypatch.setattr(state, "total_count", collections.Counter())
    monkeypatch.setattr(state, "all_total_count", [0])
    count_task("order.placed")
    count_task("order.placed")
    assert state.total_count == {"order.placed": 2} and state.all_total_count == [2]


# 3. frames_waiting: py-amqp's read buffer and socket.


def test_py_amqps_transport_keeps_a_read_buffer_and_a_socket():
    transport = amqp.transport.TCPTransport("127.0.0.1:1")
    assert transport._read_buffer == b"" and transport.sock is None
    assert "_read_buffer" in inspect.getsource(amqp.transport.TCPTransport._read)


def _connection(transport) -> SimpleNamespace:
    """A kombu connection's shape, as far as frames_waiting reads it."""
    return SimpleNamespace(connection=SimpleNamespace(transport=transport))


def test_frames_waiting_sees_a_partial_frame_or_bytes_in_the_socket():
    ours, broker = socket.socketpair()
    try:
        transport = SimpleNamespace(_read_buffer=b"", sock=ours)
        assert frames_waiting(_connection(transport)) is False
        broker.sendall(b"\x01")
        assert frames_waiting(_connection(transport)) is True
        ours.recv(1)
        transport._read_buffer = b"\x01\x00"
        assert frames_waiting(_connection(transport)) is True
    finally:
        ours.close()
        broker.close()


@pytest.mark.parametrize("connection", [None, _connection(None), SimpleNamespace(connection=None)])
def test_no_connection_means_nothing_is_waiting(connection):
    assert frames_waiting(connection) is False


# The documented extension points the worker is built on, as far as it relies on their shape.


def test_a_consumer_step_opens_a_channel_and_consumes_what_get_consumers_returns():
    source = inspect.getsource(bootsteps.ConsumerStep.start)
    assert "get_consumers(channel)" in source and ".consume()" in source


def test_a_hub_calls_its_on_tick_callbacks_and_keeps_them_in_a_set():
    assert isinstance(Hub().on_tick, set)


def test_deselecting_every_selected_queue_leaves_celery_none_to_consume():
    queues = Queues([Queue("a"), Queue("b")])
    queues.select(["a"])
    queues.deselect(list(queues.consume_from))
    assert dict(queues.consume_from) == {} and "a" in queues


def test_kombus_compression_registry_is_public():
    for name in ("register", "encoders", "get_encoder", "get_decoder"):
        assert name in compression.__all__
