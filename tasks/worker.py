"""Worker customisations: the consumer that dead-letters what Celery itself cannot read, and the install step."""

from __future__ import annotations

import logging
import select
import time

from celery import Celery
from celery.signals import setup_logging
from celery.worker import state
from celery.worker.consumer.consumer import Consumer
from kombu import compression
from vine import promise

from choreo.infra.metrics import Metrics
from choreo.infra.redis_client import redis_client
from choreo.infra.telemetry import Recorder, known_type
from choreo.messaging.access import sender_header, verified_sender
from choreo.messaging.topology import Names
from choreo.messaging.wire import dead_letter_headers
from tasks.adapter import Delivery, process_batch
from tasks.guard import Limits, Malformed, check
from tasks.observe import Observability
from tasks.outcome import Kind, Outcome
from tasks.relay import OutboxRelay
from tasks.runtime import runtime

log = logging.getLogger("choreo.worker")


class ChoreoConsumer(Consumer):
    """Celery's consumer, running choreo's deliveries in batches (tasks.adapter.process_batch).

    Every delivery is checked by the protocol guard (tasks.guard) before anything reads it;
    poison goes to the domain's DLQ with its reason instead of being dropped (celery#4797) or
    crashing the worker. A delivery that passes joins the batch; the batch runs when it holds
    the prefetch's worth of messages or when no further message is waiting in the socket, so
    a lone order is not delayed. Then each delivery is acked (or requeued) and Flower gets its
    task events (received, started, succeeded / retried / failed / rejected) exactly as
    Celery's own Request would send them: one task per message.

    Not celery-batches: with late acks it acks a whole batch whose function raised. Here the
    outcome is per message, and only what was committed and confirmed is acked.

    Also without the DelayedDelivery step: choreo never uses ETA/countdown (celery#6760), so
    the 28 celery_delayed_* queues are not declared.
    """

    # What /health, /ready and /metrics read (tasks.observe): set by the event loop's turns,
    # the batch in hand, and the connection's life.
    last_turn: float = 0.0
    consuming: bool = False
    in_flight: int = 0
    batch_started: float | None = None

    @property
    def in_hand(self) -> int:
        """Deliveries held unacked: the batch being collected and the one being processed."""
        return len(getattr(self, "_batch", ())) + self.in_flight

    class Blueprint(Consumer.Blueprint):
        default_steps = [s for s in Consumer.Blueprint.default_steps if "delayed_delivery" not in s]

    def connection_for_write(self, url=None, heartbeat=None):
        """The connection of the worker's event dispatcher (the only caller in the consumer).

        Task events for Flower go to transient, auto-deleted monitor queues: losing one loses
        nothing. The app's transport options turn publisher confirms on for every channel, so
        each task-received/started/succeeded event would wait a broker round trip in the main
        process, and the bench measured that as the largest single cost per message. Events
        stay on; only their confirms go. Events (choreo's), retries and dead letters keep theirs.
        """
        return self.ensure_connected(
            self.app.connection_for_write(
                url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
            )
        )

    def create_task_handler(self, promise=promise):
        """Every delivery goes through the protocol guard (tasks.guard), then into the batch.

        Nothing a client can put in a message raises out of here: what the guard refuses goes
        to the DLQ with its reason. Only the broker connection's own errors pass, so Celery
        reconnects as it always does.
        """
        limits = Limits(
            max_bytes=self._settings.max_message_bytes,
            max_attempts=self._settings.retry_max_attempts,
        )
        known = {name for name in self.app.tasks if not name.startswith("celery.")}
        self._batch = []
        self._batch_max = max(1, self._settings.prefetch_multiplier)
        self._known = known
        self._recorder = Recorder(self.app.domain, self._settings.metrics)

        def on_task_received(message):
            received = time.monotonic()
            try:
                message.headers = check(
                    message.body,
                    message.headers,
                    message.content_type,
                    message.content_encoding,
                    message.decode,
                    known,
                    limits,
                )
                delivery = _delivery(message, self._settings, self.app.domain)
            except Malformed as exc:
                return self._dead_letter_raw(message, f"poison: {exc}", received)
            except (
                Exception
            ) as exc:  # the guard does no I/O: anything else is the message's fault too
                return self._dead_letter_raw(
                    message, f"poison: unreadable message: {exc!r:.300}", received
                )
            delivery.received_ns = time.time_ns()
            self._batch.append((message, delivery, time.monotonic()))
            self._event(
                "task-received",
                delivery.task_id,
                name=delivery.name,
                args=message.headers.get("argsrepr"),
                kwargs=message.headers.get("kwargsrepr"),
                root_id=delivery.root_id,
                parent_id=message.headers.get("parent_id"),
                retries=0,
                eta=None,
                expires=None,
            )
            if self.hub is None or len(self._batch) >= self._batch_max:
                self._flush()

        return on_task_received

    def register_with_event_loop(self, hub):
        super().register_with_event_loop(hub)
        hub.on_tick.add(self._on_tick)  # a set: registering again after a reconnect is harmless

    def _on_tick(self) -> None:
        """Once per turn of the event loop (at least once a second, idle or not): run the batch
        when no further message is waiting. Each turn is also what /health calls progress."""
        self.last_turn = time.monotonic()
        self.consuming = True
        if self._batch and (len(self._batch) >= self._batch_max or not self._more_waiting()):
            self._flush()

    def _more_waiting(self) -> bool:
        """Bytes of a next frame already read, or waiting in the socket (py-amqp reads frames
        exactly, so the kernel keeps the rest). A heartbeat looks the same: the next tick sees
        the socket empty and runs the batch."""
        try:
            transport = self.connection.connection.transport
            if getattr(transport, "_read_buffer", b""):
                return True
            return bool(select.select([transport.sock], [], [], 0)[0])
        except Exception:  # no connection to read from: nothing is waiting
            return False

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        self.in_flight, self.batch_started = len(batch), time.monotonic()
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
            for (message, delivery, received), outcome in zip(batch, outcomes):
                self._settle_message(message, delivery, outcome, now - received)
        finally:
            self.in_flight, self.batch_started = 0, None
        if any(o.kind == Kind.REQUEUE for o in outcomes):
            # The database or the broker failed this batch and, redelivered at once, would fail it
            # again: a short pause (the quorum queue's delivery limit bounds the round trips).
            time.sleep(min(1.0, self._settings.retry_initial_delay))

    def _settle_message(self, message, delivery, outcome, runtime_s: float) -> None:
        """Ack (or requeue) one delivery, count it, and tell Flower how it ended, as Celery's Request would."""
        self._recorder.handled(delivery.name, outcome.kind, runtime_s)
        if outcome.kind == Kind.REQUEUE:
            message.reject(requeue=True)
            self._event("task-rejected", delivery.task_id, requeue=True)
            return
        message.ack()
        state.total_count[delivery.name] += 1
        state.all_total_count[0] += 1
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

    def _event(self, type_: str, task_id: str, **fields) -> None:
        dispatcher = self.event_dispatcher
        if dispatcher is not None and dispatcher.enabled:
            dispatcher.send(type_, uuid=task_id, **fields)

    def on_close(self):
        # The deliveries held for a batch belong to the channel that is going away: the broker
        # gives them to a consumer again. Nothing of them was committed or published yet.
        self._batch = []
        self.consuming = False
        super().on_close()

    @property
    def _settings(self):
        return self.app.settings

    def _dead_letter_raw(self, message, reason: str, received: float | None = None) -> None:
        """Copy the delivery, as received, to the domain's DLQ with the reason; then ack it.

        Never raises for the message's sake: if the copy cannot be published, the delivery is
        rejected to the queue's own DLX (same DLQ, the broker's reason instead of ours).
        """
        domain = self.app.domain
        names = Names(self._settings.namespace)
        props = getattr(message, "properties", None) or {}
        headers = dict(getattr(message, "headers", None) or {})
        info = getattr(message, "delivery_info", None) or {}
        headers.update(
            dead_letter_headers(
                reason,
                domain,
                1,
                False,
                headers.get("x-delivery-count"),
                info.get("redelivered", False),
            )
        )
        # A copy's claim is proven only by the adapter's records: a raw dead letter of one claims nobody.
        headers.update(
            sender_header(verified_sender(self._settings, domain, props.get("user_id"), headers)[0])
        )
        try:
            keep = {k: props[k] for k in ("message_id", "correlation_id") if props.get(k)}
            with self.app.producer_or_acquire() as producer:
                producer.publish(
                    _as_bytes(message),
                    exchange=names.dlx,
                    routing_key=domain,
                    headers=headers,
                    content_type=message.content_type or "application/octet-stream",
                    content_encoding=message.content_encoding or "binary",
                    delivery_mode=2,
                    retry=True,
                    retry_policy={"max_retries": 3},
                    user_id=self.app.user_id,
                    **keep,
                )
            message.ack()
        except self.connection_errors:
            raise  # the consumer's own connection is gone: Celery reconnects, the broker redelivers
        except Exception as exc:  # the queue's own DLX still catches it, without our reason
            log.error("could not publish to DLQ (%r); rejecting to the queue's DLX", exc)
            self._reject(message)
        self._count(domain)
        if getattr(self, "_recorder", None) is not None:
            try:
                self._recorder.handled(
                    known_type(headers.get("task"), self._known),
                    "poison",
                    time.monotonic() - received if received is not None else None,
                )
            except Exception as exc:  # a lost figure, never the worker
                log.warning("could not count a poison message: %r", exc)
        log.error("dead-lettered unreadable message to %s: %s", names.dlq(domain), reason)

    def _count(self, domain: str) -> None:
        if getattr(self, "_metrics", None) is None:
            self._metrics = Metrics(redis_client(self._settings), self._settings.redis_prefix)
        for name in ("poison", "dead_lettered"):
            self._metrics.incr(name, domain)  # never raises: a lost figure, not a lost message

    @staticmethod
    def _reject(message) -> None:
        if getattr(message, "acknowledged", False):
            return
        if hasattr(message, "reject"):
            message.reject(requeue=False)
        else:  # py-amqp's own message: kombu could not even wrap it
            message.channel.basic_reject(message.delivery_tag, requeue=False)

    def on_decode_error(self, message, exc):
        self._dead_letter_raw(
            message,
            f"poison: body is not valid {getattr(message, 'content_type', None) or 'content'}: "
            f"{str(exc)[:300]}",
            time.monotonic(),
        )


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
    )


def replayed(headers: dict, dlq: str) -> bool:
    """Moved back from this domain's DLQ by a replay (the broker's newest x-death names it):
    it starts again at the bottom of the retry ladder."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, (list, tuple)) or not deaths or not isinstance(deaths[0], dict):
        return False
    queue = deaths[0].get("queue")
    return (queue.decode(errors="replace") if isinstance(queue, bytes) else queue) == dlq


def _as_bytes(message) -> bytes:
    """The body as it came over the wire. py-amqp hands over a str when it could decode the body
    with its content_encoding, and '' for an empty one; kombu would re-encode a str with the
    given encoding, which may not be a codec at all ("binary")."""
    body = message.body
    if not isinstance(body, str):
        return bytes(body or b"")
    try:
        return body.encode(message.content_encoding or "utf-8")
    except (LookupError, TypeError, UnicodeError):
        return body.encode("utf-8", "surrogatepass")


def refuse_compression() -> None:
    """kombu inflates a body whose `compression` header asks for it before any check can run:
    a few kilobytes of gzip can become gigabytes in the worker. choreo's wire format is plain
    JSON, so in a worker every decompressor refuses (the message is dead-lettered, unread)."""

    def refuse(body, _type=None):
        raise ValueError("compressed bodies are not accepted: choreo messages are plain JSON")

    for content_type in list(compression._decoders):
        compression._decoders[content_type] = refuse


def install(app: Celery) -> None:
    """Make `app`'s workers run choreo's consumer and outbox relay."""
    refuse_compression()
    app.conf.worker_consumer = "tasks.worker:ChoreoConsumer"
    app.steps["worker"].add(OutboxRelay)
    app.steps["worker"].add(Observability)
    app.steps["consumer"].add(
        "tasks.remote:RemoteControl"
    )  # remote control, in place of Celery's (tasks.app)


@setup_logging.connect
def _keep_our_logging(**_):
    """With a receiver here Celery leaves logging alone: `choreo worker` configured it (choreo.infra.logs)."""
