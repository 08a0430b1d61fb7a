"""ConfirmedBurst against the real broker: confirms awaited together, nacks and dead connections
reported per key."""

from __future__ import annotations

import socket
import uuid

import pika
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def burst(settings):
    from urllib.parse import unquote, urlsplit

    from choreo.messaging.publisher import ConfirmedBurst
    from tasks.app import make_app

    # As the bootstrap user: these bursts go to test queues through the default exchange, which
    # no service may write to (the mechanism is the same for every user).
    app = make_app("client", settings)
    app.conf.broker_url = settings.broker_url
    app.user_id = unquote(urlsplit(settings.broker_url).username)
    b = ConfirmedBurst(app, timeout=10)
    yield b
    b.close()
    app.close()


@pytest.fixture
def channel(settings):
    from choreo.messaging.admin import connection_parameters

    conn = pika.BlockingConnection(connection_parameters(settings.broker_url))
    yield conn.channel()
    conn.close()


def _queue(channel, **arguments) -> str:
    name = f"burst-test-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(name, durable=False, auto_delete=False, arguments=arguments or None)
    return name


def _message(queue: str, n: int) -> dict:
    return {
        "name": "burst.test",
        "args": [{"n": n}],
        "kwargs": {},
        "task_id": f"t-{n}",
        "queue": queue,
    }


def test_every_message_is_written_and_confirmed(burst, channel):
    queue = _queue(channel)
    try:
        assert burst.run([(n, _message(queue, n)) for n in range(50)]) == set()
        assert channel.queue_declare(queue, passive=True).method.message_count == 50
    finally:
        channel.queue_delete(queue)


def test_a_message_the_broker_refuses_is_reported_by_its_key_and_the_rest_confirmed(burst, channel):
    queue = _queue(channel, **{"x-max-length": 2, "x-overflow": "reject-publish"})
    try:
        failed = burst.run([(f"k{n}", _message(queue, n)) for n in range(4)])
        assert failed == {"k2", "k3"}  # the queue was full: the broker nacked those two
        assert channel.queue_declare(queue, passive=True).method.message_count == 2
    finally:
        channel.queue_delete(queue)


def test_a_connection_that_died_between_bursts_is_reopened_and_nothing_is_lost(burst, channel):
    queue = _queue(channel)
    try:
        assert burst.run([(0, _message(queue, 0))]) == set()
        burst.conn.connection.sock.shutdown(socket.SHUT_RDWR)  # as a broker restart leaves it
        assert burst.run([(n, _message(queue, n)) for n in range(1, 4)]) == set()
        assert channel.queue_declare(queue, passive=True).method.message_count == 4
    finally:
        channel.queue_delete(queue)


def test_a_confirm_that_never_comes_fails_the_burst_after_its_timeout(burst, channel, monkeypatch):
    queue = _queue(channel)
    try:
        burst.timeout = 0.3
        burst.run([(0, _message(queue, 0))])  # open the connection
        monkeypatch.setattr(
            burst, "_on_ack", lambda tag, multiple: None
        )  # acks arrive, nobody hears them
        burst.channel.events["basic_ack"] = {burst._on_ack}
        assert burst.run([("late", _message(queue, 1))]) == {"late"}
    finally:
        channel.queue_delete(queue)


def test_a_burst_publishes_byte_for_byte_what_celery_s_send_task_publishes(
    burst, channel, settings
):
    """The wire format does not change with the batched path: same body, headers and properties."""
    from choreo.messaging.publisher import Publisher, event_message
    from choreo.messaging.topology import Names
    from models.envelope import make_envelope

    queue = _queue(channel)
    try:
        env = make_envelope(
            "order.completed", "ord-1", {"customer_id": "cust-1", "amount_cents": 5}, source="test"
        )
        publisher = Publisher(burst.app, Names(settings.namespace))
        kwargs = dict(
            event_message(publisher.names, env),
            exchange=None,
            routing_key=None,
            queue=queue,
            expiration=30,
            message_id="client-id-1",
        )
        publisher.send(**kwargs)  # Celery's send_task, one confirm
        assert burst.run([(0, kwargs)]) == set()
        (_m1, props1, body1), (_m2, props2, body2) = [
            channel.basic_get(queue, auto_ack=True) for _ in range(2)
        ]
        assert body1 == body2
        assert vars(props1) == vars(props2)
        assert props1.headers["task"] == "order.completed" and props1.headers["id"] == env.event_id
    finally:
        channel.queue_delete(queue)
