"""The broker topology, derived from a subscription table it is given, declared idempotently.

The table (saga mode -> domain -> message types the domain hears) comes from the handlers'
side (consumers.registry.topology builds it); this module knows queues, not handlers.

Per domain D (namespace N, default "choreo"):
  N.D            quorum queue, bound to N.events for each message type D hears;
                 rejects dead-letter to N.dlx (routing key D)
  N.D.dlq        quorum queue bound to N.dlx (topic) with key D: messages D gave up on. Its
                 own dead-letter target is N.D (at-least-once): a replay rejects a dead letter
                 and the broker moves it back, its publisher's user_id intact
                 (choreo.messaging.access: only the sender the broker vouches for is believed)
  N.D.retry.K    the retry ladder, quorum queues too: a copy D publishes to the topic exchange
                 N.retry with key D.K waits here for the K-th retry's delay (queue TTL), then
                 dead-letters back to N.D through the default exchange (at-least-once)
  N.unrouted     quorum queue behind the fanout exchange N.unrouted, the alternate exchange
                 of N.events, N.dlx and N.retry: a message no binding routes (a typo'd type, a
                 subscriber not yet deployed) is kept here instead of dropped by the broker;
                 a replay moves it back to N.events with its routing key
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kombu import Connection, Exchange, Queue, binding

from choreo.infra import tls
from config.settings import Settings

log = logging.getLogger("choreo.topology")
PRECONDITION_FAILED = 406
PEEKS_UNLIMITED = 2**31 - 1  # the largest delivery limit every RabbitMQ version takes


@dataclass(frozen=True)
class Names:
    ns: str

    @property
    def events(self) -> str:
        return f"{self.ns}.events"

    @property
    def dlx(self) -> str:
        return f"{self.ns}.dlx"

    @property
    def retry_exchange(self) -> str:
        return f"{self.ns}.retry"

    @property
    def unrouted(self) -> str:
        """The alternate exchange and the queue behind it (exchanges and queues are separate
        names)."""
        return f"{self.ns}.unrouted"

    def queue(self, domain: str) -> str:
        return f"{self.ns}.{domain}"

    def dlq(self, domain: str) -> str:
        return f"{self.ns}.{domain}.dlq"

    def retry(self, domain: str, attempt: int) -> str:
        return f"{self.ns}.{domain}.retry.{attempt}"

    @staticmethod
    def retry_key(domain: str, attempt: int) -> str:
        """The routing key of the retry ladder's rung `attempt` on the retry exchange."""
        return f"{domain}.{attempt}"


# saga mode -> domain -> the message types that domain hears (its bindings on the events exchange)
Hears = Mapping[str, Mapping[str, Iterable[str]]]


def queue_names(settings: Settings) -> list[str]:
    """Every queue choreo declares, in declaration order (no bindings needed to name them)."""
    n = Names(settings.namespace)
    return [
        q
        for d in settings.domains
        for q in (
            n.queue(d),
            n.dlq(d),
            *(n.retry(d, k) for k in range(1, settings.retry_max_attempts + 1)),
        )
    ] + [n.unrouted]


class Topology:
    def __init__(self, settings: Settings, hears: Hears) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.hears = hears
        keep_unroutable = {"alternate-exchange": self.names.unrouted}
        self.unrouted = Exchange(self.names.unrouted, type="fanout", durable=True)
        self.events = Exchange(
            self.names.events, type="topic", durable=True, arguments=keep_unroutable
        )
        # Topic exchanges, so topic permissions decide which routing keys a service may use.
        self.dlx = Exchange(self.names.dlx, type="topic", durable=True, arguments=keep_unroutable)
        self.retry = Exchange(
            self.names.retry_exchange, type="topic", durable=True, arguments=keep_unroutable
        )

    def routing_keys(self, domain: str, mode: str | None = None) -> list[str]:
        return sorted(self.hears[mode or self.settings.saga_mode].get(domain, ()))

    def stale_keys(self, domain: str) -> list[str]:
        """Keys another saga mode binds to this domain's queue: unbound when switching modes."""
        other = {rk for m in self.hears for rk in self.routing_keys(domain, m)}
        return sorted(other - set(self.routing_keys(domain)))

    def domain_queue(self, domain: str) -> Queue:
        n = self.names
        return Queue(
            n.queue(domain),
            exchange=self.events,
            bindings=[binding(self.events, routing_key=rk) for rk in self.routing_keys(domain)],
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": n.dlx,
                "x-dead-letter-routing-key": domain,
                "x-delivery-limit": self.settings.delivery_limit,
            },
        )

    def dead_letter_queue(self, domain: str) -> Queue:
        return Queue(
            self.names.dlq(domain),
            exchange=self.dlx,
            routing_key=domain,
            durable=True,
            queue_arguments={"x-queue-type": "quorum", **_back_to(self.names.queue(domain))},
        )

    def retry_queue(self, domain: str, attempt: int) -> Queue:
        delay_ms = int(self.settings.retry_delay(attempt) * 1000)
        return Queue(
            self.names.retry(domain, attempt),
            exchange=self.retry,
            routing_key=self.names.retry_key(domain, attempt),
            durable=True,
            # Quorum, like every queue here: a classic rung lives on one node, and a copy
            # waiting on it while that node is down is lost (or, published meanwhile, dropped).
            # Back to N.D at-least-once: a copy leaves the rung only once N.D has it.
            queue_arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": delay_ms,
                **_back_to(self.names.queue(domain)),
            },
        )

    def unrouted_queue(self) -> Queue:
        return Queue(
            self.names.unrouted,
            exchange=self.unrouted,
            durable=True,
            queue_arguments={"x-queue-type": "quorum", **_back_to(None, self.names.events)},
        )

    def queues(self, domain: str) -> list[Queue]:
        return [
            self.domain_queue(domain),
            self.dead_letter_queue(domain),
            *(self.retry_queue(domain, k) for k in range(1, self.settings.retry_max_attempts + 1)),
        ]

    def all_queues(self) -> list[Queue]:
        return [q for d in self.settings.domains for q in self.queues(d)] + [self.unrouted_queue()]

    def declare(self, connection: Connection | None = None) -> list[str]:
        """Declare exchanges, queues and bindings; safe to run any number of times."""
        own = connection is None
        if own:
            tls.check_broker(self.settings)
        conn = connection or Connection(self.settings.broker_url, ssl=tls.kombu_ssl(self.settings))
        try:
            channel = conn.default_channel
            self.unrouted(channel).declare()
            self._declare_exchange(conn, self.events)
            self._declare_exchange(conn, self.dlx)
            self._declare_exchange(conn, self.retry)
            declared = []
            for q in self.all_queues():
                self._declare_queue(conn, q)
                declared.append(q.name)
            for d in self.settings.domains:
                for rk in self.stale_keys(d):
                    channel.queue_unbind(self.names.queue(d), self.names.events, rk)
            self._unbind_inactive(conn)
            return declared
        finally:
            if own:
                conn.release()

    def _declare_exchange(self, conn: Connection, exchange: Exchange) -> None:
        """Declare; an exchange declared before the alternate exchange existed is re-created.

        RabbitMQ refuses to redeclare an exchange with other arguments (PRECONDITION_FAILED).
        Deleting it drops its bindings; the queue declarations that follow restore them.
        """
        channel = conn.channel()
        try:
            exchange(channel).declare()
        except conn.channel_errors as exc:
            if getattr(exc, "reply_code", None) != PRECONDITION_FAILED:
                raise
            log.warning(
                "exchange %s was declared without alternate exchange %s: re-creating it (%s)",
                exchange.name,
                self.names.unrouted,
                exc,
            )
            channel = conn.channel()
            channel.exchange_delete(exchange.name)
            exchange(channel).declare()
        finally:
            if channel.is_open:
                channel.close()

    def _declare_queue(self, conn: Connection, queue: Queue) -> None:
        """Declare; an empty dead-letter queue or retry rung declared by an older choreo (without
        the way back a replay takes; a classic rung) is re-created. One that holds messages is
        never deleted: the error says what to do."""
        channel = conn.channel()
        try:
            queue(channel).declare()
        except conn.channel_errors as exc:
            rung = ".retry." in queue.name
            if getattr(exc, "reply_code", None) != PRECONDITION_FAILED or not (
                rung or queue.name.endswith((".dlq", ".unrouted"))
            ):
                raise
            channel = conn.channel()
            _name, held, _consumers = channel.queue_declare(queue.name, passive=True)
            if held and rung:
                raise RuntimeError(
                    f"{queue.name} holds {held} retry cop(ies) and was declared by an older choreo "
                    f"({exc}); they go back to their queue within the rung's delay: stop the older "
                    "workers, wait for it to empty (rabbitmqctl list_queues), then run choreo "
                    "broker setup again"
                ) from None
            if held:
                raise RuntimeError(
                    f"{queue.name} holds {held} message(s) and was declared by an older choreo "
                    f"({exc}); replay or move them (choreo dlq list), then delete it (rabbitmqctl "
                    f"delete_queue {queue.name}) and run choreo broker setup again"
                ) from None
            log.warning("re-creating empty %s as this choreo declares it (%s)", queue.name, exc)
            # Not if_empty: quorum queues refuse that flag (540); the window since the passive look
            # is a round trip, and this runs at set-up, before this choreo's workers start.
            channel.queue_delete(queue.name)
            queue(channel).declare()
        finally:
            if channel.is_open:
                channel.close()

    def _unbind_inactive(self, conn: Connection) -> None:
        """A worker queue of another mode (the orchestrator's, after switching back to
        choreography) must stop collecting events nobody will consume. Unbound, not deleted:
        what it already holds stays visible in list_queues."""
        for d in {d for m in self.hears for d in self.hears[m]} - set(self.settings.domains):
            channel = conn.channel()
            try:
                channel.queue_declare(self.names.queue(d), passive=True)
            except conn.channel_errors:
                continue  # never declared here: nothing to unbind (the broker closed that channel)
            for rk in {rk for m in self.hears for rk in self.routing_keys(d, m)}:
                channel.queue_unbind(self.names.queue(d), self.names.events, rk)
            channel.close()

    def expected_bindings(self) -> set[tuple[str, str, str]]:
        """(exchange, routing key, queue) triples, to compare with `rabbitmqctl list_bindings`."""
        n = self.names
        out = set()
        for d in self.settings.domains:
            out |= {(n.events, rk, n.queue(d)) for rk in self.routing_keys(d)}
            out.add((n.dlx, d, n.dlq(d)))
            out |= {
                (n.retry_exchange, n.retry_key(d, k), n.retry(d, k))
                for k in range(1, self.settings.retry_max_attempts + 1)
            }
        out.add((n.unrouted, "", n.unrouted))
        return out


def _back_to(queue: str | None, exchange: str = "") -> dict:
    """Dead-letter arguments that send a rejected (or, on a rung, expired) message back (to
    `queue` through the default exchange, or to `exchange` with its own routing key), at least
    once: the broker keeps it until the target confirms it (quorum queues; needs overflow
    reject-publish)."""
    args = {
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        # A peek (basic.get, then nack to requeue) is a returned delivery, which a quorum queue
        # counts; past its delivery limit (20 by default since RabbitMQ 4.0) it would
        # dead-letter, that is replay, the message: only an operator's replay may.
        "x-delivery-limit": PEEKS_UNLIMITED,
    }
    if queue is not None:
        args["x-dead-letter-routing-key"] = queue
    return args
