"""Worker customisations: the consumer that dead-letters what Celery itself cannot read, and the install step."""
from __future__ import annotations

import logging

from celery import Celery
from celery.signals import setup_logging, worker_process_init
from celery.worker.consumer.consumer import Consumer
from kombu import compression
from vine import promise

from choreo.infra.db import dispose_all
from choreo.infra.metrics import Metrics
from choreo.infra.redis_client import redis_client
from choreo.messaging.topology import Names
from choreo.messaging.wire import dead_letter_headers
from tasks.guard import Limits, Malformed, check
from tasks.relay import OutboxRelay

log = logging.getLogger("choreo.worker")


class ChoreoConsumer(Consumer):
    """Celery's consumer, with every delivery checked before Celery reads it (tasks.guard) and
    poison input dead-lettered with its reason instead of dropped or crashing the worker.

    Celery acks a message it cannot decode (celery#4797: no native DLQ), and dies on some it
    can decode (a body of the wrong shape, no `id` header); here each goes to the domain's
    DLQ with the reason in its headers. Also without the DelayedDelivery step: choreo
    never uses ETA/countdown (celery#6760), so the 28 celery_delayed_* queues are not declared.
    """

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
        return self.ensure_connected(self.app.connection_for_write(
            url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}))

    def create_task_handler(self, promise=promise):
        """Celery's message handler behind the protocol guard (tasks.guard).

        Nothing a client can put in a message raises out of here: what the guard refuses,
        and anything Celery itself still raises on, goes to the DLQ with its reason. Only
        the broker connection's own errors pass, so Celery reconnects as it always does.
        """
        celery_handler = super().create_task_handler(promise)
        limits = Limits(max_bytes=self._settings.max_message_bytes, max_attempts=self._settings.retry_max_attempts)
        known = {name for name in self.app.tasks if not name.startswith("celery.")}
        passthrough = tuple(self.connection_errors) + tuple(self.channel_errors)

        def on_task_received(message):
            try:
                message.headers = check(message.body, message.headers, message.content_type,
                                        message.content_encoding, message.decode, known, limits)
            except Malformed as exc:
                return self._dead_letter_raw(message, f"poison: {exc}")
            except Exception as exc:  # the guard does no I/O: anything else is the message's fault too
                return self._dead_letter_raw(message, f"poison: unreadable message: {exc!r:.300}")
            try:
                return celery_handler(message)
            except passthrough:
                raise
            except Exception as exc:
                if message.acknowledged:  # Celery got as far as settling it: nothing to redo
                    log.error("celery raised after settling a message: %r", exc, exc_info=True)
                    return None
                log.error("celery could not handle a message that passed the guard: %r", exc, exc_info=True)
                return self._dead_letter_raw(message, f"poison: celery could not handle it: {exc!r:.300}")

        return on_task_received

    @property
    def _settings(self):
        return self.app.settings

    def _dead_letter_raw(self, message, reason: str) -> None:
        """Copy the delivery, as received, to the domain's DLQ with the reason; then ack it.

        Never raises for the message's sake: if the copy cannot be published, the delivery is
        rejected to the queue's own DLX (same DLQ, the broker's reason instead of ours).
        """
        domain = self.app.domain
        names = Names(self._settings.namespace)
        props = getattr(message, "properties", None) or {}
        headers = dict(getattr(message, "headers", None) or {})
        info = getattr(message, "delivery_info", None) or {}
        headers.update(dead_letter_headers(reason, domain, 1, False, headers.get("x-delivery-count"),
                                           info.get("redelivered", False)))
        try:
            keep = {k: props[k] for k in ("message_id", "correlation_id") if props.get(k)}
            with self.app.producer_or_acquire() as producer:
                producer.publish(_as_bytes(message), exchange=names.dlx, routing_key=domain, headers=headers,
                                 content_type=message.content_type or "application/octet-stream",
                                 content_encoding=message.content_encoding or "binary",
                                 delivery_mode=2, retry=True, retry_policy={"max_retries": 3}, **keep)
            message.ack()
        except self.connection_errors:
            raise  # the consumer's own connection is gone: Celery reconnects, the broker redelivers
        except Exception as exc:  # the queue's own DLX still catches it, without our reason
            log.error("could not publish to DLQ (%r); rejecting to the queue's DLX", exc)
            self._reject(message)
        self._count(domain)
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
        self._dead_letter_raw(message, f"poison: body is not valid {getattr(message, 'content_type', None) or 'content'}: "
                                       f"{str(exc)[:300]}")

    def on_unknown_message(self, body, message):
        self._dead_letter_raw(message, "poison: not a choreo message (no task header)")

    def on_unknown_task(self, body, message, exc):
        name = (message.headers or {}).get("task")
        self._dead_letter_raw(message, f"poison: unknown message type {name!r:.100} for this domain")

    def on_invalid_task(self, body, message, exc):
        self._dead_letter_raw(message, f"poison: invalid task message: {str(exc)[:300]}")


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


@setup_logging.connect
def _keep_our_logging(**_):
    """With a receiver here Celery leaves logging alone: `choreo worker` configured it (choreo.infra.logs)."""


@worker_process_init.connect
def _after_fork(**_):
    # Pool children must not share the parent's database connections.
    dispose_all()
