"""Operator's broker client (pika): queue depths, dead-letter peek and replay.

pika's BlockingConnection suits one-off, synchronous operator commands; the hot path
publishes through Celery/kombu instead.
"""

from __future__ import annotations

import json
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import pika
from pika.exceptions import ChannelClosedByBroker

from choreo.infra import tls
from choreo.messaging.access import broker_urls, service_url
from choreo.messaging.topology import Names, queue_names
from config.settings import Settings

# `choreo dlq list unrouted`: the messages no binding routed, kept by the alternate exchange.
UNROUTED = "unrouted"


def connection_parameters(
    broker_url: str, context: ssl.SSLContext | None = None
) -> list[pika.ConnectionParameters]:
    """pika's parameters for each node of broker_url, shuffled (BlockingConnection tries them in
    turn: with a cluster, a node that is down costs one refused connect). amqps:// nodes need
    `context` (choreo.infra.tls.broker_context): each node's host name is checked against it."""
    urls = broker_urls(broker_url)
    out = []
    for url in urls:
        u = urlparse(url)
        vhost = unquote(u.path[1:]) if u.path and u.path != "/" else "/"
        host, secure = u.hostname or "127.0.0.1", u.scheme == "amqps"
        if secure and context is None:
            raise tls.TLSRefused(
                f"{host}: an amqps:// node needs a TLS context (choreo.infra.tls.broker_context)"
            )
        out.append(
            pika.ConnectionParameters(
                host=host,
                port=u.port or (tls.AMQPS_PORT if secure else 5672),
                virtual_host=vhost or "/",
                ssl_options=pika.SSLOptions(context, server_hostname=host) if secure else None,
                credentials=pika.PlainCredentials(
                    unquote(u.username or "guest"), unquote(u.password or "guest")
                ),
                connection_attempts=3 if len(urls) == 1 else 1,
                retry_delay=1,
                blocked_connection_timeout=30,
                heartbeat=60,
            )
        )
    random.shuffle(out)
    return out


# Dead letters one replay reads at most (the ones it keeps are held until it ends).
MAX_SCAN = 10_000


@dataclass
class DeadLetterView:
    delivery_tag: int
    event_id: str
    message_id: str | None
    routing_key: str
    type: str
    order_id: str | None
    reason: str
    domain: str
    attempts: Any
    dead_lettered_at: str | None
    headers: dict
    body: str
    occurred_at: str | None = None  # its envelope's, as on the wire (the dedup window's clock)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "delivery_tag"}

    def summary(self) -> dict:
        """as_dict without the headers and the body (a listing's row)."""
        return {k: v for k, v in self.as_dict().items() if k not in ("headers", "body")}


@dataclass
class Replayed:
    """One dead letter a replay moves back (`replayed`: recorded, then moved by the broker;
    `forced`: recorded, then its marked copy published by the operator, confirmed, then the dead
    letter acked)."""

    view: DeadLetterView
    outcome: str
    props: Any = field(default=None, repr=False)  # pika's BasicProperties as it came
    raw: bytes = field(default=b"", repr=False)


REPLAYED = "replayed"
FORCED = "forced"
# The broker's own notes on a message: a forced copy is a new publication, they start again.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


def _with_event_id(event_id: str) -> Callable[[DeadLetterView], bool]:
    """A replay's selector for the one dead letter whose event id is `event_id`."""

    def select(view: DeadLetterView) -> bool:
        return view.event_id == event_id

    return select


@dataclass
class _Scan:
    """One replay's read of a dead-letter queue: how many it has taken off, and the delivery tags
    of those `select` refused, held unacked until `release` puts them back."""

    channel: Any  # pika's BlockingChannel
    queue: str
    domain: str
    select: Callable[[DeadLetterView], bool] | None
    scanned: int = 0
    keep: list[int] = field(default_factory=list)
    confirming: bool = False  # the channel is in confirm mode (a forced copy was published)

    def exhausted(self) -> bool:
        return self.scanned >= MAX_SCAN

    def take(self, size: int) -> list[Replayed]:
        """Up to `size` dead letters `select` accepts; fewer when the queue (or MAX_SCAN) ends."""
        results: list[Replayed] = []
        while len(results) < size and not self.exhausted():
            method, props, body = self.channel.basic_get(self.queue, auto_ack=False)
            if method is None:
                break
            self.scanned += 1
            view = describe(method, props, body, self.domain)
            if self.select is not None and not self.select(view):
                self.keep.append(method.delivery_tag)
                continue
            results.append(Replayed(view, REPLAYED, props, body))
        return results

    def release(self) -> None:
        """Put back the dead letters kept, and close the channel (unless the broker closed it)."""
        if self.channel.is_open:
            for tag in self.keep:
                self.channel.basic_nack(delivery_tag=tag, requeue=True)
            self.channel.close()


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def describe(method, props, body: bytes, domain: str) -> DeadLetterView:
    headers = _text(props.headers or {})
    order_id = occurred_at = None
    try:
        decoded = json.loads(body)
        env = decoded[0][0] if isinstance(decoded, list) else None
        order_id = env.get("order_id") if isinstance(env, dict) else None
        occurred_at = env.get("occurred_at") if isinstance(env, dict) else None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        pass
    reason = headers.get("x-choreo-reason")
    if reason is None and domain == UNROUTED:
        reason = (
            f"unrouted: nothing is bound to routing key {method.routing_key!r} "
            f"on {method.exchange or '(default)'}"
        )
    if reason is None and headers.get("x-death"):
        death = headers["x-death"][0]
        reason = f"broker dead-lettered: {death.get('reason')} from {death.get('queue')}"
    return DeadLetterView(
        delivery_tag=method.delivery_tag,
        event_id=str(headers.get("id") or props.message_id or ""),
        message_id=props.message_id,
        routing_key=method.routing_key,
        type=str(headers.get("task") or "?"),
        order_id=order_id or headers.get("choreo_order_id"),
        reason=reason or "unknown",
        domain=domain,
        attempts=headers.get("x-choreo-attempts"),
        dead_lettered_at=headers.get("x-choreo-dead-lettered-at"),
        headers=headers,
        body=body.decode(errors="replace"),
        occurred_at=occurred_at if isinstance(occurred_at, str) else None,
    )


class BrokerAdmin:
    """As the operator's broker user by default (`service`: another service's user; tests and the
    chaos injector publish as the service that owns what they send)."""

    def __init__(self, settings: Settings, service: str | None = "operator") -> None:
        """`service` None: as the bootstrap user of broker_url (the set-up's; tests use it to
        be a client that may write anywhere, such as a queue directly)."""
        self.settings = settings
        self.names = Names(settings.namespace)
        url = settings.broker_url if service is None else service_url(settings, service)
        self.user_id = unquote(urlparse(broker_urls(url)[0]).username or "guest")
        tls.check_broker(settings)  # one clear line for a certificate that cannot be verified
        context = tls.broker_context(settings) if tls.broker_uses_tls(settings) else None
        self.conn = pika.BlockingConnection(connection_parameters(url, context))

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()

    def __enter__(self) -> BrokerAdmin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def queue_stats(self) -> list[dict]:
        """name, messages, consumers for every choreo queue (passive declares: creates nothing)."""
        out = []
        for name in queue_names(self.settings):
            ch = self.conn.channel()
            try:
                ok = ch.queue_declare(name, passive=True)
                out.append(
                    {
                        "name": name,
                        "messages": ok.method.message_count,
                        "consumers": ok.method.consumer_count,
                    }
                )
                ch.close()
            except ChannelClosedByBroker:
                out.append({"name": name, "messages": None, "consumers": None})
        return out

    def held_in(self, domain: str) -> str:
        """The queue holding DOMAIN's dead letters; `unrouted` names the queue of unroutable
        messages."""
        _check(domain, self.settings)
        return self.names.unrouted if domain == UNROUTED else self.names.dlq(domain)

    def peek(self, domain: str, limit: int = 50) -> list[DeadLetterView]:
        """Read up to `limit` dead letters and put them all back (nothing is consumed)."""
        queue = self.held_in(domain)
        ch = self.conn.channel()
        seen: list[DeadLetterView] = []
        try:
            for _ in range(limit):
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                seen.append(describe(method, props, body, domain))
        finally:
            if seen:
                ch.basic_nack(delivery_tag=seen[-1].delivery_tag, multiple=True, requeue=True)
            ch.close()
        return seen

    def replay(
        self,
        domain: str,
        event_id: str | None = None,
        limit: int = 1000,
        *,
        select: Callable[[DeadLetterView], bool] | None = None,
        batch: int = 100,
        before_ack: Callable[[list[Replayed]], None] | None = None,
        force: Callable[[DeadLetterView], dict | None] | None = None,
    ) -> list[DeadLetterView]:
        """Move dead letters (all, one event id, or those `select` accepts; at most `limit`) back
        to the domain's queue; unrouted messages back to the events exchange with their routing
        key (once a subscriber is bound they reach it; until then they come back to `unrouted`).

        Nothing is re-published: each is rejected from its dead-letter queue, whose own
        dead-letter target is where it came from (choreo.messaging.topology), and the broker
        moves it at least once, as it was, so its AMQP user_id still names the service that
        sent it (the consumer believes nothing else, choreo.messaging.access). The consumer
        starts it at attempt 0 (tasks.worker.replayed).

        In batches of `batch`: `before_ack(batch's results)` runs first (the replay record's
        durable commit), then the batch's dead letters are moved. A crash in between moves
        nothing (they are redelivered to the next replay, and the record says "replayed": a
        second replay is absorbed by the consumer's inbox). Returns the dead letters moved.

        `force(view)`: the mark (headers) of a dead letter the operator replays outside the
        dedup window knowingly, or None. Such a one is not moved by the broker (it would keep
        its publisher's user_id, and the consumer would dead-letter it again as stale): after
        the record, this connection publishes its copy, with the mark, to the domain's first
        retry rung (whose expiry brings it to the domain's queue), and acks the dead letter once
        the broker confirmed the copy (a crash in between leaves both: a second replay is
        absorbed). The broker stamps the copy with this user's user_id, the
        only thing that makes the consumer believe the mark (choreo.messaging.access).
        """
        if event_id is not None:
            select = _with_event_id(event_id)
        queue = self.held_in(domain)
        scan = _Scan(self.conn.channel(), queue, domain, select)
        moved: list[DeadLetterView] = []
        try:
            while len(moved) < limit and not scan.exhausted():
                results = scan.take(min(batch, limit - len(moved)))
                if not results:
                    break
                marks = {}
                for r in results:
                    if force is not None and (mark := force(r.view)) is not None:
                        r.outcome, marks[id(r)] = FORCED, mark
                if before_ack is not None:
                    before_ack(results)
                for r in results:
                    if r.outcome == FORCED:
                        self._publish_forced(scan, domain, r, marks[id(r)])
                        scan.channel.basic_ack(r.view.delivery_tag)
                    else:  # the broker moves it back (the queue's dead-letter target)
                        scan.channel.basic_reject(r.view.delivery_tag, requeue=False)
                    moved.append(r.view)
        finally:
            scan.release()
        return moved

    def _publish_forced(self, scan: _Scan, domain: str, r: Replayed, mark: dict) -> None:
        """A dead letter's copy with the operator's mark, to the domain's first rung, confirmed
        (pika raises if the broker refuses it: the dead letter is not acked then)."""
        props = r.props
        headers = {
            k: v
            for k, v in (props.headers or {}).items()
            if not any(k.startswith(b) for b in _BROKER_HEADERS)
        }
        # A replay starts the ladder again (like a moved dead letter, tasks.worker.replayed).
        headers.update(mark, choreo_attempt=0)
        if not scan.confirming:
            scan.channel.confirm_delivery()
            scan.confirming = True
        scan.channel.basic_publish(
            self.names.retry_exchange,
            self.names.retry_key(domain, 1),
            r.raw,
            pika.BasicProperties(
                content_type=props.content_type,
                content_encoding=props.content_encoding,
                headers=headers,
                delivery_mode=2,
                message_id=props.message_id,
                user_id=self.user_id,
            ),
            mandatory=True,
        )

    def publish_raw(
        self,
        routing_key: str,
        body: bytes,
        headers: dict | None = None,
        exchange: str | None = None,
        content_type: str | None = "application/json",
        content_encoding: str | None = "utf-8",
        message_id: str | None = None,
        user_id: str | None | bool = True,
    ) -> None:
        """Publish bytes as any client would (tests and the chaos injector use it for poison).
        `user_id`: True stamps this connection's user (what choreo's publishers do), None sends
        none, a string claims that user (the broker refuses any but the connection's own)."""
        ch = self.conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            self.names.events if exchange is None else exchange,
            routing_key,
            body,
            pika.BasicProperties(
                content_type=content_type,
                content_encoding=content_encoding,
                headers=headers or {},
                delivery_mode=2,
                message_id=message_id,
                user_id=self.user_id if user_id is True else user_id or None,
            ),
        )
        ch.close()


def _check(domain: str, settings: Settings) -> None:
    if domain not in settings.domains and domain != UNROUTED:
        raise ValueError(
            f"unknown domain {domain!r}; choose from {', '.join((*settings.domains, UNROUTED))}"
        )
