"""Publishing: events as Celery protocol-2 task messages, persistent, with publisher confirms.

An event `payment.completed` is a task message named `payment.completed` sent to the topic
exchange with routing key `payment.completed`: every domain bound to that key gets a copy,
and each runs its own task of that name. Flower shows the type and the domain's worker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from amqp import Message
from celery import Celery
from kombu import Queue
from kombu.serialization import dumps
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, get_current_span
from opentelemetry.util.types import AttributeValue

from choreo.infra import tracing
from choreo.messaging.topology import Names
from choreo.messaging.wire import flower_argsrepr
from models.envelope import Envelope

log = logging.getLogger("choreo.publisher")

# kombu's retry policy for a publish whose connection dropped (e.g. a broker restart).
RETRY_POLICY = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


class Publisher:
    def __init__(self, app: Celery, names: Names) -> None:
        self.app = app
        self.names = names

    def publish(self, envelope: Envelope, relay: bool = False) -> None:
        """Returns once the broker confirmed the message (confirm_publish is on).

        With tracing on, the publish is a PRODUCER span. A saga's first message (no cause) gets
        a root span in the envelope's own trace, and goes out with that span as its traceparent;
        any other message's span is a child of the span that staged it (its traceparent): the
        outbox relay's (`relay`) also links to it."""
        span = self._span(envelope, relay)
        if span is not None and envelope.causation_id is None:
            envelope = envelope.model_copy(update={"traceparent": tracing.traceparent_of(span)})
        try:
            self.send(**event_message(self.names, envelope))
        except BaseException as exc:
            if span is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, repr(exc)[:200]))
            raise
        finally:
            if span is not None:
                span.end()

    def _span(self, envelope: Envelope, relay: bool):
        settings = getattr(self.app, "settings", None)
        t = (
            tracing.tracer(settings, getattr(self.app, "domain", None) or "client")
            if settings is not None
            else None
        )
        if t is None:
            return None
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": self.names.events,
            "messaging.rabbitmq.destination.routing_key": envelope.type,
            "messaging.message.id": envelope.event_id,
            "choreo.order_id": envelope.order_id,
            "choreo.event_type": envelope.type,
        }
        name = f"send {envelope.type}"
        if envelope.causation_id is None:
            return tracing.start_root(
                t, name, envelope.trace_id, kind=SpanKind.PRODUCER, attributes=attributes
            )
        parent = tracing.parent_context(envelope.traceparent)
        links = []
        if relay:
            attributes["choreo.relay"] = True
            if parent is not None:
                links = [
                    Link(get_current_span(parent).get_span_context(), {"choreo.link": "staged_by"})
                ]
        return t.start_span(
            name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes, links=links
        )

    def send(
        self,
        name: str,
        args: Any,
        kwargs: Any,
        *,
        task_id: str,
        exchange: str | None = None,
        routing_key: str | None = None,
        queue: str | None = None,
        headers: dict | None = None,
        expiration: float | None = None,
        argsrepr: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """Send a task message to an exchange + routing key, or straight to a queue by name.

        `argsrepr` is what Flower shows as the arguments; Celery would otherwise build a
        saferepr of the whole envelope for every message.
        """
        options: dict[str, Any] = {}
        argsrepr = argsrepr if argsrepr is not None else flower_argsrepr(args)
        if argsrepr is not None:
            options["argsrepr"] = argsrepr
        if expiration is not None:
            options["expiration"] = expiration
        if message_id:
            options["message_id"] = message_id  # a client's own id for its message, kept on copies
        if getattr(self.app, "user_id", None):
            options["user_id"] = (
                self.app.user_id
            )  # the broker refuses it unless it is the connection's user
        if queue is not None:
            # Through the default exchange; the queue is declared by the topology, not per message.
            options["queue"] = Queue(queue, no_declare=True)
        else:
            options.update(exchange=exchange, routing_key=routing_key)
        self.app.send_task(
            name,
            args=args,
            kwargs=kwargs,
            task_id=task_id,
            headers=headers or {},
            retry=True,
            retry_policy=RETRY_POLICY,
            delivery_mode=2,
            # Celery would otherwise route via the app's default queue and declare it on
            # every new connection: topology is declared once, by choreo.messaging.topology.
            declare=[],
            **options,
        )


def event_message(names: Names, envelope: Envelope, **link) -> dict:
    """`Publisher.send`'s arguments for an event: to the events exchange, its type as routing key.
    `link` (parent_id, root_id) ties it to the message that caused it (Flower's task tree)."""
    return {
        "name": envelope.type,
        "args": [envelope.to_wire()],
        "kwargs": {},
        "task_id": envelope.event_id,
        "exchange": names.events,
        "routing_key": envelope.type,
        "headers": {
            "choreo_order_id": envelope.order_id,
            "choreo_correlation_id": envelope.correlation_id,
        },
        **link,
    }


def task_message(
    app: Celery,
    name: str,
    args: Any,
    kwargs: Any,
    *,
    task_id: str,
    exchange: str | None = None,
    routing_key: str | None = None,
    queue: str | None = None,
    headers: dict | None = None,
    expiration: float | None = None,
    argsrepr: str | None = None,
    message_id: str | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
) -> tuple[bytes, dict, dict, str, str]:
    """(body, headers, properties, exchange, routing key) of the message `Publisher.send` would
    publish, built once, without Celery's per-publish routing, signals and producer machinery.

    Celery's own header builder (`as_task_v2`) and kombu's serializer, so the wire format is
    Celery's; tests/integration/test_publish_burst.py holds the two byte for byte equal.
    """
    argsrepr = argsrepr if argsrepr is not None else flower_argsrepr(args)
    _headers, properties, body, _sent = app.amqp.as_task_v2(
        task_id,
        name,
        args,
        kwargs,
        reply_to=app.thread_oid,
        root_id=root_id or parent_id,
        parent_id=parent_id,
        argsrepr=argsrepr,
        ignore_result=None,
    )
    _headers.update(headers or {})
    content_type, content_encoding, payload = dumps(body, serializer="json")
    properties.update(
        content_type=content_type, content_encoding=content_encoding, delivery_mode=2, priority=0
    )
    if expiration is not None:
        properties["expiration"] = str(int(expiration * 1000))
    if message_id:
        properties["message_id"] = message_id
    if getattr(app, "user_id", None):
        properties["user_id"] = app.user_id
    if queue is not None:
        exchange, routing_key = "", queue
    return payload, _headers, properties, exchange or "", routing_key or ""


class BurstFailed(Exception):
    """The broker did not confirm a burst (nack, timeout, connection lost)."""


class ConfirmedBurst:
    """Many publishes on one channel in confirm mode, their confirms awaited together.

    One confirm at a time costs a broker round trip per message; here a batch's messages are
    all written, then the broker's acks (often one `multiple` ack for all) are read. py-amqp
    calls back for each basic.ack / basic.nack; the wait is bounded by `timeout`, since a
    confirm that never comes would otherwise hang the worker. A dedicated connection, without
    heartbeats (nobody services them between bursts; the next burst finds a dead one and
    reconnects), so the consumer's own connection never waits on a publish.
    """

    def __init__(self, app: Celery, timeout: float) -> None:
        self.app = app
        self.timeout = timeout
        self.conn = None
        self.channel = None
        self.seq = 0  # delivery tag of the channel's last publish
        self.pending: dict[int, int] = {}  # delivery tag -> index of the message, until confirmed
        self.nacked: set[int] = set()  # indices of messages the broker refused

    def _open(self) -> None:
        conn = self.app.connection_for_write(
            heartbeat=0, transport_options={"confirm_publish": False}
        )
        conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5)
        channel = conn.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        self.conn, self.channel, self.seq = conn, channel, 0

    def close(self) -> None:
        conn, self.conn, self.channel = self.conn, None, None
        if conn is not None:
            # Already broken: nothing to close cleanly.
            with contextlib.suppress(Exception):
                conn.close()

    def _settle(self, tag: int, multiple: bool) -> list[int]:
        tags = [t for t in self.pending if t <= tag] if multiple else [tag]
        return [self.pending.pop(t) for t in tags if t in self.pending]

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.nacked.update(self._settle(tag, multiple))

    def run(self, messages: list[tuple[Any, dict]], before_each=None) -> set[Any]:
        """Publish each (key, message) and wait for every confirm; returns the keys of which at
        least one message was not confirmed. A message is the keyword arguments of
        `Publisher.send` (`event_message` for an event; a retry or dead-letter copy).

        A connection that fails (one the broker dropped while idle, say) is reopened once and
        only the messages not yet confirmed are written again. `before_each(n, total)` is a test
        hook (tasks.adapter's fault points)."""
        self.nacked = set()
        todo = list(range(len(messages)))
        for attempt in (1, 2):
            self.pending = {}
            try:
                self._write(messages, todo, before_each)
                self._wait()
                todo = []
                break
            except Exception as exc:  # connection lost, channel closed, timeout
                log.warning(
                    "publish burst attempt %d: %d of %d message(s) unconfirmed: %r",
                    attempt,
                    len(self.pending) + len(todo),
                    len(messages),
                    exc,
                )
                self.close()
                todo = sorted(set(self.pending.values()) | set(todo))
        failed = self.nacked | set(todo)
        return {messages[i][0] for i in failed}

    def _write(self, messages: list, todo: list[int], before_each) -> None:
        if todo and self.conn is None:
            self._open()
        while todo:
            i = todo[0]
            if before_each:
                before_each(i, len(messages))
            body, headers, properties, exchange, routing_key = task_message(
                self.app, **messages[i][1]
            )
            channel = self.channel
            assert channel is not None  # opened above, before the first message
            channel.basic_publish(
                Message(body, application_headers=headers, **properties),
                exchange=exchange,
                routing_key=routing_key,
            )
            self.seq += 1
            self.pending[self.seq] = todo.pop(0)

    def _wait(self) -> None:
        deadline = time.monotonic() + self.timeout
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BurstFailed(
                    f"{len(self.pending)} publish confirm(s) not received within {self.timeout}s"
                )
            conn = self.conn
            assert conn is not None  # pending confirms: _write opened it
            try:
                conn.drain_events(timeout=left)
            except TimeoutError:
                continue
