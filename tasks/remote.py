"""The worker's remote control (the pidbox Flower pings and inspects), as a consumer bootstep that
no broker fault can turn into the worker's death."""

from __future__ import annotations

import logging
import time
import uuid

from celery import bootsteps
from celery.worker.pidbox import Pidbox
from kombu import Consumer

from tasks.poison import DeadLetters

log = logging.getLogger("choreo.remote")

# Seconds between tries of a refused declare: quick at first, then a steady pace.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
RETRY_EVERY = 5.0
REMIND_EVERY = 60.0  # a refusal that lasts is logged again this often


class ConnectionMailbox(Pidbox):
    """Celery's worker mailbox, its queue named for the connection it is declared on:
    `<node>@<host>.<token>.celery.pidbox`, a new token at each start (each connection).

    The queue is exclusive to its connection (Celery 5.7's control_queue_exclusive, which RabbitMQ
    4.3 requires of a transient queue). Under the one name per worker Celery gives it, a worker
    whose node stopped or died declared it again on another node a few milliseconds later, while
    the cluster still held the lost connection's copy: refused (405 RESOURCE_LOCKED, seen after a
    stop_app and a kill -9), or declared and then swept away by the cleanup of the old copy (404 on
    the bind, seen after a kill -9; a binding removed under the new copy, never reported, would
    leave the worker deaf to Flower). A name per connection has nothing to clash with. Broadcasts
    (ping, inspect) go to the celery.pidbox fanout exchange, so every copy hears them, and replies
    carry the node name, not the queue's: Flower, `celery inspect` and the grants (a domain's user
    may use `<node>(-N)?@<anything>.celery.pidbox`) see no difference.

    Only the queue's name differs from Celery's start (kombu's Mailbox.get_queue gives the
    exchange and the arguments): the rest, handlers and replies included, is Celery's.
    """

    queue_name = ""

    def __init__(self, c, on_decode_error=None):
        super().__init__(c)
        # A mailbox message that cannot be decoded takes the raw dead-letter path (tasks.poison)
        # like one on the domain's queue: RemoteControl passes it.
        self.on_decode_error = on_decode_error or c.on_decode_error

    def start(self, c):
        mailbox = self.node.mailbox
        queue = mailbox.get_queue(f"{self.hostname}.{uuid.uuid4().hex[:8]}")
        self.queue_name = queue.name
        self.node.channel = c.connection.channel()
        self.consumer = Consumer(
            self.node.channel,
            [queue],
            no_ack=True,
            accept=mailbox.accept,
            callbacks=[self.on_message],
            on_decode_error=self.on_decode_error,
        )
        self.consumer.consume()


class RemoteControl(bootsteps.StartStopStep):
    """Remote control in place of Celery's own step (celery.worker.consumer.control.Control), which
    lets any error of its mailbox's declare end the worker as unrecoverable (celery#1963): here a
    channel error (a refused declare) is logged and tried again on the event loop's timer while
    the worker goes on consuming its queue; a broadcast sent meanwhile gets no answer from it, as
    from a busy worker. A connection error propagates: the consumer reconnects and starts this
    step again. Retrying the whole connection instead (broker_channel_error_retry) would hand the
    prefetched deliveries back at every try, towards the quorum queue's delivery limit.

    Installed by tasks.worker.install; Celery's step is off for it (worker_enable_remote_control,
    tasks.app). The solo pool's mailbox (choreo's workers run no green pool).
    """

    label = "Remote control"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        self.box = ConnectionMailbox(c, DeadLetters(c.app, c.connection_errors).on_decode_error)
        self.retry = None  # the timer entry of the next try
        self.refused = 0  # tries refused since the last success
        self.refused_since = 0.0
        self.reminded = 0.0
        super().__init__(c, **kwargs)

    def include_if(self, c):
        # Celery's step's condition, less its setting (off so that this step alone serves the
        # mailbox).
        return c.conninfo.supports_exchange_type("fanout")

    def start(self, c):
        self._listen(c)

    def _listen(self, c) -> None:
        self.retry = None
        if c.connection is None:
            return  # between connections: the next start declares
        try:
            self.box.start(c)
        except c.channel_errors as exc:
            self.box.stop(c)  # the channel the refusal closed (py-amqp reopens it): not left open
            self._refused(c, exc)
            return
        if self.refused:
            log.info(
                "remote control back: %s after %d refused tries in %.1fs",
                self.box.queue_name,
                self.refused,
                time.monotonic() - self.refused_since,
            )
        self.refused = 0

    def _refused(self, c, exc) -> None:
        now = time.monotonic()
        if not self.refused:
            self.refused_since = self.reminded = now
            log.error(
                "remote control not available: declaring %s was refused (%r); the worker goes on "
                "consuming and tries again (if it lasts: this worker's broker grants, "
                "choreo broker setup)",
                self.box.queue_name,
                exc,
            )
        elif now - self.reminded >= REMIND_EVERY:
            self.reminded = now
            log.warning(
                "remote control still not available after %.0fs (%d refused tries): %r",
                now - self.refused_since,
                self.refused,
                exc,
            )
        self.refused += 1
        delay = RETRY_DELAYS[self.refused - 1] if self.refused <= len(RETRY_DELAYS) else RETRY_EVERY
        self.retry = c.timer.call_after(delay, self._listen, (c,))

    def _cancel_retry(self, c) -> None:
        if self.retry is not None:
            c.timer.cancel(self.retry)
            self.retry = None

    def stop(self, c):
        self._cancel_retry(c)  # the next connection's start declares anew
        self.box.stop(c)

    def shutdown(self, c):
        self._cancel_retry(c)
        self.box.shutdown(c)
