"""The batch consumer bootstep (tasks.worker.BatchConsumer) with the broker, the adapter and the
event dispatcher replaced: it takes the worker's queue from Celery, guards every delivery, runs a
batch when it is full or nothing more is waiting, and settles and reports each message on its own.
(Real deliveries: tests/e2e, test_flower_events, test_hostile_input, test_crash_points.)"""

from __future__ import annotations

import collections
import json
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from celery.worker import state
from kombu import Connection, compression

from config.settings import Settings
from tasks import worker
from tasks.outcome import Kind, Outcome

SETTINGS = Settings(broker_url="amqp://guest:guest@127.0.0.1:1//", prefetch_multiplier=3)
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass
class FakeMessage:
    """A kombu Message's shape, as far as the consumer, the guard and the DLQ path read it."""

    body: bytes
    headers: dict
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    properties: dict = field(default_factory=dict)
    delivery_info: dict = field(default_factory=dict)
    settled: list = field(default_factory=list)

    def decode(self):
        return json.loads(self.body)

    def ack(self):
        self.settled.append("ack")

    def reject(self, requeue=False):
        self.settled.append("requeue" if requeue else "reject")


def message(event_id: str = "ev-1", task: str = "order.placed") -> FakeMessage:
    envelope = {"event_id": event_id, "type": task}  # the guard checks the frame, not this
    body = json.dumps([[envelope], {}, EMBED]).encode()
    return FakeMessage(body, {"lang": "py", "task": task, "id": event_id, "argsrepr": "a"})


class Dispatcher:
    enabled = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

        self.fields: list[dict] = []

    def send(self, type_, uuid, **fields):
        self.sent.append((type_, uuid))
        self.fields.append(fields)


@pytest.fixture
def app():
    from tasks.app import make_app

    app = make_app("payment", SETTINGS)
    app.amqp.queues.select([app.conf.task_default_queue])  # as the worker's -Q does
    return app


@pytest.fixture
def c(app):
    """What the step reads of Celery's consumer."""
    return SimpleNamespace(
        app=app,
        hub=SimpleNamespace(on_tick=set()),
        event_dispatcher=Dispatcher(),
        connection=None,  # nothing waiting in any socket
        connection_errors=(),
    )


class Batches(list):
    """The task ids of every batch the adapter was given; each message gets `kind`."""

    kind = Kind.PROCESSED


@pytest.fixture
def batches(monkeypatch):
    seen = Batches()

    def process_batch(rt, deliveries):
        seen.append([d.task_id for d in deliveries])
        return [Outcome(seen.kind, "why") for _ in deliveries]

    monkeypatch.setattr(worker, "process_batch", process_batch)
    monkeypatch.setattr(worker, "runtime", lambda app: None)
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    monkeypatch.setattr(state, "total_count", collections.Counter())
    monkeypatch.setattr(state, "all_total_count", [0])
    return seen


def test_the_step_takes_the_workers_queue_and_leaves_celery_none(app, c):
    name = app.conf.task_default_queue
    step = worker.BatchConsumer(c)
    assert [q.name for q in step.queues] == [name]
    assert dict(app.amqp.queues.consume_from) == {}
    assert (c.last_turn, c.consuming, c.batch_started, c.in_hand) == (0.0, False, None, 0)


def test_its_kombu_consumer_hands_over_raw_messages_with_the_workers_prefetch(app, c):
    step = worker.BatchConsumer(c)
    with Connection("memory://") as conn:
        channel = conn.channel()
        (consumer,) = step.get_consumers(channel)
        assert consumer.on_message == step.on_message
        assert consumer.on_decode_error == step.poison.on_decode_error
        assert [q.name for q in consumer.queues] == [app.conf.task_default_queue]
        assert consumer.accept == {"application/json"}
        assert channel.qos.prefetch_count == SETTINGS.prefetch_multiplier
        channel.close()


def test_a_full_batch_runs_at_once_and_each_message_is_settled_and_reported(c, batches):
    step = worker.BatchConsumer(c)
    msgs = [message(f"ev-{n}") for n in range(3)]
    for m in msgs[:2]:
        step.on_message(m)
    assert batches == [] and c.in_hand == 2
    step.on_message(msgs[2])
    assert batches == [["ev-0", "ev-1", "ev-2"]]
    assert [m.settled for m in msgs] == [["ack"]] * 3 and c.in_hand == 0
    sent = c.event_dispatcher.sent
    for n in range(3):
        # One Flower record per (message, consuming domain): this worker is payment's.
        mine = [t for t, uuid in sent if uuid == f"ev-{n}@payment"]
        assert mine == ["task-received", "task-started", "task-succeeded"]
    assert state.total_count == {"order.placed": 3} and state.all_total_count == [3]


def test_a_lone_message_runs_on_the_next_tick_when_nothing_more_is_waiting(c, batches):
    step = worker.BatchConsumer(c)
    c.hub.on_tick.add(step.tick)
    step.on_message(message())
    assert batches == []
    for tick in c.hub.on_tick:
        tick()
    assert batches == [["ev-1"]] and c.consuming and c.last_turn > 0


def test_flower_links_a_task_to_its_causes_record_and_always_names_the_order(c, batches):
    step = worker.BatchConsumer(c)
    m = message()
    m.headers.update(parent_id="ev-0", argsrepr="")  # a client that left argsrepr empty
    m.body = json.dumps(
        [[{"event_id": "ev-1", "order_id": "ord-7", "correlation_id": "ord-7"}], {}, EMBED]
    ).encode()
    step.on_message(m)
    received = c.event_dispatcher.fields[0]
    assert received["args"] == "order=ord-7 correlation=ord-7 event=ev-1"
    assert received["parent_id"] == "ev-0"  # no verified sender: the id as it was
    assert step._parent("ev-0", "order") == "ev-0@order"  # the cause's delivery in order
    assert step._parent("ev-0", "operator") == "ev-0"  # sent by no domain (place_order)


def test_a_requeued_batch_is_rejected_back_to_the_queue_and_reported_as_such(c, batches):
    batches.kind = Kind.REQUEUE
    step = worker.BatchConsumer(c)
    m = message()
    step.on_message(m)
    step.tick()
    assert m.settled == ["requeue"]
    assert c.event_dispatcher.sent[-1] == ("task-rejected", "ev-1@payment")
    assert state.all_total_count == [0]


def test_poison_goes_to_the_dead_letter_path_and_never_into_a_batch(c, batches, monkeypatch):
    dead: list[str] = []
    step = worker.BatchConsumer(c)
    monkeypatch.setattr(
        step.poison, "dead_letter", lambda m, reason, received=None: dead.append(reason)
    )
    step.on_message(message(task="no.such.type"))
    bad = message()
    bad.body = b"[]"
    step.on_message(bad)
    step.tick()
    assert batches == [] and c.event_dispatcher.sent == []
    assert dead == [
        "poison: unknown message type 'no.such.type' for this domain",
        "poison: body must be a JSON array of 3 elements [args, kwargs, options], got 0",
    ]


def test_a_lost_connection_drops_the_batch_it_held_for_the_broker_to_redeliver(c, batches):
    step = worker.BatchConsumer(c)
    step.on_message(message())
    c.consuming = True
    step.stop(c)
    assert step.batch == [] and c.in_hand == 0 and c.consuming is False
    step.tick()
    assert batches == []


def test_without_an_event_loop_each_message_runs_as_it_comes(c, batches):
    c.hub = None
    step = worker.BatchConsumer(c)
    step.on_message(message())
    assert batches == [["ev-1"]]


def test_a_worker_refuses_every_compressed_body_but_can_still_compress():
    worker.refuse_compression()
    for name in ("application/x-gzip", "gzip", "zlib"):
        with pytest.raises(ValueError, match="compressed bodies are not accepted"):
            compression.decompress(zlib.compress(b"{}"), name)
    body, _type = compression.compress(b"{}", "zlib")
    assert zlib.decompress(body) == b"{}"
