"""The worker's batch consumer (a Celery consumer bootstep running choreo's deliveries in
batches) and the install step that puts it, the outbox relay and the probes into a worker."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, bootsteps
from celery.signals import setup_logging
from kombu import Consumer, compression

from choreo.messaging.access import forced_by_operator, verified_sender
from choreo.messaging.topology import Names
from choreo.messaging.wire import flower_argsrepr, flower_task_id
from tasks import control  # noqa: F401  (registers the control commands in the worker)
from tasks.adapter import Delivery, process_batch
from tasks.guard import Limits, Malformed, check
from tasks.internals import count_task, frames_waiting
from tasks.observe import Observability
from tasks.outcome import Kind, Outcome
from tasks.poison import DeadLetters
from tasks.relay import OutboxRelay
from tasks.retention import RetentionSweep
from tasks.runtime import runtime
from tasks.timers import TimerSweep

__all__ = ["BatchConsumer", "install", "refuse_compression", "replayed"]

log = logging.getLogger("choreo.worker")


class BatchConsumer(bootsteps.ConsumerStep):
    """Consumes the domain's queue and runs its deliveries in batches (tasks.adapter.process_batch).

    Every delivery is checked by the protocol guard (tasks.guard) before anything decodes it
    (kombu hands `on_message` the raw message); poison goes to the domain's DLQ with its reason
    (tasks.poison) instead of being dropped (celery#4797) or crashing the worker. A delivery that
    passes joins the batch; the batch runs when it holds the prefetch's worth of messages or, on
    a turn of the event loop, when no further message is waiting in the socket, so a lone order
    is not delayed. Then each delivery is acked (or requeued) and Flower gets its task events
    (received, started, succeeded / retried / failed / rejected) through the consumer's event
    dispatcher, as Celery's own Request would send them: one task per message and consuming
    domain. An event two domains hear is two deliveries with one event id: Flower keys its
    records by uuid, so the uuid it sees is `<event id>@<domain>` (choreo.messaging.wire.
    flower_task_id); the message's own id is never changed.

    Not celery-batches: with late acks it acks a whole batch whose function raised. Here the
    outcome is per message, and only what was committed and confirmed is acked.

    The queue the worker was started with (-Q) is consumed here alone: Celery's own task
    consumer is left with none, so no delivery reaches Celery's request handling unchecked.
    """

    label = "Batch consumer"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.c, self.app = c, c.app
        self.settings = c.app.settings
        self.limits = Limits(
            max_bytes=self.settings.max_message_bytes,
            max_attempts=self.settings.retry_max_attempts,
        )
        # Celery's own prefetch for a worker process of the solo pool: its multiplier.
        self.prefetch = max(1, self.settings.prefetch_multiplier)
        self.poison = DeadLetters(c.app, c.connection_errors)
        self.batch: list[tuple[Any, Delivery, float]] = []
        self.in_flight = 0
        # The queue the worker was started with (-Q): this step's alone. Deselected, it stays in
        # Celery's list, where its quorum type keeps global QoS off Celery's own channel.
        selected = c.app.amqp.queues.consume_from
        self.queues = list(selected.values())
        c.app.amqp.queues.deselect(list(selected))
        c.batch_queues = self.queues  # what `inspect active_queues` lists (tasks.control)
        # What /health, /ready and /metrics read (tasks.observe), declared on the consumer as a
        # step does: each turn of the event loop, the connection's life, the batch in hand.
        c.last_turn, c.consuming, c.batch_started, c.in_hand = 0.0, False, None, 0

    def get_consumers(self, channel):
        consumer = Consumer(
            channel,
            queues=self.queues,
            accept=self.app.conf.accept_content,
            on_message=self.on_message,
            on_decode_error=self.poison.on_decode_error,
        )
        # Per consumer: quorum queues have no global QoS (kombu#2469).
        consumer.qos(prefetch_count=self.prefetch, apply_global=False)
        return [consumer]

    def start(self, c):
        super().start(c)
        if c.hub is not None:
            c.hub.on_tick.add(self.tick)  # a set: adding it again after a reconnect is harmless

    def stop(self, c):
        self._drop(c)
        super().stop(c)

    def shutdown(self, c):
        self._drop(c)
        super().shutdown(c)

    def _drop(self, c) -> None:
        # The deliveries held for a batch belong to the channel that is going away: the broker
        # gives them to a consumer again. Nothing of them was committed or published yet.
        self.batch = []
        c.consuming = False
        self._held()

    def on_message(self, message) -> None:
        """Every delivery goes through the protocol guard (tasks.guard), then into the batch.

        Nothing a client can put in a message raises out of here: what the guard refuses goes
        to the DLQ with its reason. Only the broker connection's own errors pass, so Celery
        reconnects as it always does.
        """
        received = time.monotonic()
        try:
            message.headers = check(
                message.body,
                message.headers,
                message.content_type,
                message.content_encoding,
                message.decode,
                self.poison.known,
                self.limits,
            )
            delivery = _delivery(message, self.settings, self.app.domain)
        except Malformed as exc:
            return self.poison.dead_letter(message, f"poison: {exc}", received)
        except Exception as exc:  # the guard does no I/O: anything else is the message's fault
            return self.poison.dead_letter(
                message, f"poison: unreadable message: {exc!r:.300}", received
            )
        delivery.received_ns = time.time_ns()
        self.batch.append((message, delivery, time.monotonic()))
        self._held()
        self._event(
            "task-received",
            delivery.task_id,
            name=delivery.name,
            # The order's id first, whoever built the message (a foreign client's may be empty).
            args=message.headers.get("argsrepr") or flower_argsrepr(delivery.args),
            kwargs=message.headers.get("kwargsrepr"),
            root_id=delivery.root_id,
            parent_id=self._parent(message.headers.get("parent_id"), delivery.sender),
            retries=0,
            eta=None,
            expires=None,
        )
        if self.c.hub is None or len(self.batch) >= self.prefetch:
            self.flush()

    def tick(self) -> None:
        """Once per turn of the event loop (at least once a second, idle or not): run the batch
        when no further message is waiting. Each turn is also what /health calls progress."""
        c = self.c
        c.last_turn = time.monotonic()
        c.consuming = True
        if self.batch and (len(self.batch) >= self.prefetch or not frames_waiting(c.connection)):
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        self.in_flight, self.c.batch_started = len(batch), time.monotonic()
        for _message, delivery, _t in batch:
            self._event("task-started", delivery.task_id)
        try:
            outcomes = process_batch(runtime(self.app), [d for _m, d, _t in batch])
        except Exception as exc:  # a bug, not a message: give them all back to the broker
            log.critical(
                "batch of %d failed unexpectedly; requeueing: %r", len(batch), exc, exc_info=True
            )
            outcomes = [Outcome(Kind.REQUEUE, f"{exc!r:.300}")] * len(batch)
        now = time.monotonic()
        try:
            for (message, delivery, received), outcome in zip(batch, outcomes, strict=False):
                self._settle(message, delivery, outcome, now - received)
        finally:
            self.in_flight, self.c.batch_started = 0, None
            self._held()
        if any(o.kind == Kind.REQUEUE for o in outcomes):
            # The database or the broker failed this batch and, redelivered at once, would fail it
            # again: a short pause (the quorum queue's delivery limit bounds the round trips).
            time.sleep(min(1.0, self.settings.retry_initial_delay))

    def _settle(self, message, delivery, outcome, runtime_s: float) -> None:
        """Ack (or requeue) one delivery, count it, and tell Flower how it ended, as Celery's
        Request would."""
        self.poison.recorder.handled(delivery.name, outcome.kind, runtime_s)
        if outcome.kind == Kind.REQUEUE:
            message.reject(requeue=True)
            self._event("task-rejected", delivery.task_id, requeue=True)
            return
        message.ack()
        count_task(delivery.name)
        if outcome.kind in (Kind.PROCESSED, Kind.DUPLICATE):
            self._event(
                "task-succeeded",
                delivery.task_id,
                result=repr({"outcome": outcome.kind, "emitted": outcome.emitted}),
                runtime=runtime_s,
            )
        elif outcome.kind == Kind.RETRY:
            self._event("task-retried", delivery.task_id, exception=outcome.detail, traceback="")
        else:
            self._event("task-failed", delivery.task_id, exception=outcome.detail, traceback="")

    def _parent(self, parent_id: str | None, sender: str | None) -> str | None:
        """The cause's record in Flower: consumed by the domain that sent this message."""
        if parent_id and sender is not None and sender in self.settings.domains:
            return flower_task_id(parent_id, sender)
        return parent_id

    def _event(self, type_: str, task_id: str, **fields) -> None:
        """One of Flower's task events about this domain's delivery of message `task_id`."""
        dispatcher = self.c.event_dispatcher
        if dispatcher is not None and dispatcher.enabled:
            dispatcher.send(type_, uuid=flower_task_id(task_id, str(self.app.domain)), **fields)

    def _held(self) -> None:
        """Deliveries held unacked: the batch being collected and the one being processed."""
        self.c.in_hand = len(self.batch) + self.in_flight


def _delivery(message, settings, domain: str) -> Delivery:
    """What the adapter needs of a delivery the guard passed (its body decoded, kombu caches it)."""
    args, kwargs, _embed = message.decode()
    headers = message.headers or {}
    props = message.properties or {}
    back = replayed(
        headers, Names(settings.namespace).dlq(domain)
    )  # a replay starts the ladder again
    sender, claim = verified_sender(settings, domain, props.get("user_id"), headers)
    return Delivery(
        name=headers["task"],
        args=args,
        kwargs=kwargs,
        task_id=str(headers["id"]),
        root_id=headers.get("root_id"),
        attempt=0 if back else int(headers.get("choreo_attempt") or 0),
        message_id=props.get("message_id"),
        delivery_count=headers.get("x-delivery-count", 0),
        redelivered=bool((message.delivery_info or {}).get("redelivered", False)),
        sender=sender,
        claim=claim,
        forced=forced_by_operator(settings, props.get("user_id"), headers),
    )


def replayed(headers: dict, dlq: str) -> bool:
    """Moved back from this domain's DLQ by a replay (the broker's newest x-death names it):
    it starts again at the bottom of the retry ladder."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, (list, tuple)) or not deaths or not isinstance(deaths[0], dict):
        return False
    queue = deaths[0].get("queue")
    return (queue.decode(errors="replace") if isinstance(queue, bytes) else queue) == dlq


def refuse_compression() -> None:
    """kombu inflates a body whose `compression` header asks for it before any check can run:
    a few kilobytes of gzip can become gigabytes in the worker. choreo's wire format is plain
    JSON, so in a worker every decompressor refuses (the message is dead-lettered, unread).
    Through kombu's public registry: each method keeps its encoder, its decoder refuses."""

    def refuse(body, _type=None):
        raise ValueError("compressed bodies are not accepted: choreo messages are plain JSON")

    for content_type in compression.encoders():
        encoder, _name = compression.get_encoder(content_type)
        compression.register(encoder, refuse, content_type)


def install(app: Celery) -> None:
    """Make `app`'s workers run choreo's batch consumer, outbox relay, timer sweep and retention
    sweep."""
    refuse_compression()
    # Celery's consumer less its DelayedDelivery step, its events unconfirmed (tasks.internals).
    app.conf.worker_consumer = "tasks.internals:ChoreoConsumer"
    app.steps["worker"].add(OutboxRelay)
    app.steps["worker"].add(TimerSweep)
    app.steps["worker"].add(RetentionSweep)
    app.steps["worker"].add(Observability)
    app.steps["consumer"].add(BatchConsumer)
    app.steps["consumer"].add(
        "tasks.remote:RemoteControl"
    )  # remote control, in place of Celery's (tasks.app)


@setup_logging.connect
def _keep_our_logging(**_):
    """With a receiver here Celery leaves logging alone: `choreo worker` configured it
    (choreo.infra.logs)."""
