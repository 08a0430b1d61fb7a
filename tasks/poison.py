"""The raw dead-letter path: a delivery nothing may read (the protocol guard refused it, or kombu
could not decode it) is copied, as received, to the domain's DLQ with its reason, then acked.

Celery has no DLQ (celery#4797) and dies of some malformed task messages; here poison never
takes the worker down and never vanishes: it waits in the DLQ with the reason an operator reads.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property

from choreo.infra.metrics import Metrics
from choreo.infra.redis_client import redis_client
from choreo.infra.telemetry import Recorder, known_type
from choreo.messaging.access import sender_header, verified_sender
from choreo.messaging.topology import Names
from choreo.messaging.wire import dead_letter_headers

log = logging.getLogger("choreo.worker")


class DeadLetters:
    """The raw dead-letter path of one worker's domain (`app`: a tasks.app.ChoreoApp).

    `connection_errors`: the consumer connection's own errors, which pass (Celery reconnects and
    the broker redelivers); nothing a message holds raises out of here.
    """

    def __init__(self, app, connection_errors: tuple = ()) -> None:
        self.app = app
        self.connection_errors = connection_errors
        self._metrics: Metrics | None = None

    @property
    def settings(self):
        return self.app.settings

    @property
    def domain(self) -> str:
        return self.app.domain

    @cached_property
    def known(self) -> set[str]:
        """The message types this domain hears (its tasks, less Celery's own)."""
        return {name for name in self.app.tasks if not name.startswith("celery.")}

    @cached_property
    def recorder(self) -> Recorder:
        return Recorder(self.domain, self.settings.metrics)

    def on_decode_error(self, message, exc) -> None:
        """kombu's on_decode_error: the body cannot be decoded (or kombu refused it)."""
        self.dead_letter(
            message,
            f"poison: body is not valid {getattr(message, 'content_type', None) or 'content'}: "
            f"{str(exc)[:300]}",
            time.monotonic(),
        )

    def dead_letter(self, message, reason: str, received: float | None = None) -> None:
        """Copy the delivery, as received, to the domain's DLQ with the reason; then ack it.

        Never raises for the message's sake: if the copy cannot be published, the delivery is
        rejected to the queue's own DLX (same DLQ, the broker's reason instead of ours).
        """
        domain = self.domain
        names = Names(self.settings.namespace)
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
        # A copy's claim is proven only by the adapter's records: a raw dead letter of one claims
        # nobody.
        headers.update(
            sender_header(verified_sender(self.settings, domain, props.get("user_id"), headers)[0])
        )
        try:
            self._publish(message, names, headers, props)
            message.ack()
        except self.connection_errors:
            raise  # the consumer's own connection is gone: Celery reconnects, the broker redelivers
        except Exception as exc:  # the queue's own DLX still catches it, without our reason
            log.error("could not publish to DLQ (%r); rejecting to the queue's DLX", exc)
            _reject(message)
        self._count()
        try:
            self.recorder.handled(
                known_type(headers.get("task"), self.known),
                "poison",
                time.monotonic() - received if received is not None else None,
            )
        except Exception as exc:  # a lost figure, never the worker
            log.warning("could not count a poison message: %r", exc)
        log.error("dead-lettered unreadable message to %s: %s", names.dlq(domain), reason)

    def _publish(self, message, names: Names, headers: dict, props: dict) -> None:
        keep = {k: props[k] for k in ("message_id", "correlation_id") if props.get(k)}
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                as_bytes(message),
                exchange=names.dlx,
                routing_key=self.domain,
                headers=headers,
                content_type=message.content_type or "application/octet-stream",
                content_encoding=message.content_encoding or "binary",
                delivery_mode=2,
                retry=True,
                retry_policy={"max_retries": 3},
                user_id=self.app.user_id,
                **keep,
            )

    def _count(self) -> None:
        if self._metrics is None:
            self._metrics = Metrics(redis_client(self.settings), self.settings.redis_prefix)
        for name in ("poison", "dead_lettered"):
            self._metrics.incr(name, self.domain)  # never raises: a lost figure, not a lost message


def _reject(message) -> None:
    if getattr(message, "acknowledged", False):
        return
    if hasattr(message, "reject"):
        message.reject(requeue=False)
    else:  # py-amqp's own message: kombu could not even wrap it
        message.channel.basic_reject(message.delivery_tag, requeue=False)


def as_bytes(message) -> bytes:
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
