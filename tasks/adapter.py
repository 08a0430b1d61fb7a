"""The thin adapter every domain shares: a batch of deliveries in, an outcome per delivery out.

No business logic here. A batch is the messages a worker already holds (its prefetch), and
every fixed cost is paid once for all of them (tasks.worker.BatchConsumer collects them):

  1. decode         poison goes to the DLQ at once, with its reason
  2. Redis          one round trip: which event ids were seen (the fast duplicate path)
  3. lookups        reads from other services, before any write lock is taken
  4. transaction    one, with a savepoint per message: a message that fails rolls back alone;
                    the inbox table (the truth about duplicates) is read in one query; the
                    commit is durable before anything below happens
  5. publish burst  every message's events, retry copies and dead-letter copies, the broker's
                    confirms awaited together (choreo.messaging.publisher.ConfirmedBurst)
  6. mark-sent      one statement for the confirmed events (a non-durable commit: losing it
                    costs a re-publish that consumers absorb)
  7. Redis          one round trip: the idempotency keys and the counters
  8. then the consumer acks each delivery whose publishes were all confirmed, and requeues
     the rest (their state is committed: the redelivery is a duplicate, the relay publishes)

The outcomes, as Flower shows them (the consumer sends each message's task events):
  SUCCESS  processed (state + outbox committed, events confirmed by the broker) or duplicate
  RETRY    a transient failure: a copy waits in the retry ladder (broker-side TTL); this one is
           acked
  FAILURE  dead-lettered: poison input at once, or a failure that outlived its retries
  REJECTED requeued: a publish the broker did not confirm (it is redelivered)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy.exc import IntegrityError

from choreo.app import window as window_rule
from choreo.app.outbox import mark_sent
from choreo.app.uow import Batch
from choreo.infra import logs, tracing
from choreo.messaging.access import may_send, owners, speaks_for_itself
from choreo.messaging.publisher import event_message
from config.settings import Settings
from consumers.base import Subscription
from consumers.registry import subscriptions
from models.envelope import Envelope, PoisonMessage, decode
from tasks import failures, spans
from tasks.outcome import Kind, Outcome, State
from tasks.runtime import Runtime, runtime

log = logging.getLogger("choreo.adapter")
OPTIMISTIC_RETRIES = 10


@dataclass
class Delivery:
    """One message of a batch, as the consumer received it (what Celery would hand a task)."""

    name: str  # the task name: the event type
    args: Any
    kwargs: Any
    task_id: str
    root_id: str | None = None
    attempt: int = 0  # the choreo_attempt header: rungs of the retry ladder climbed
    message_id: str | None = None
    delivery_count: Any = 0  # x-delivery-count as it arrived
    redelivered: bool = False
    received_ns: int = 0  # when the consumer received it (wall clock): its span starts there
    # The service that sent it, as the broker vouches (its user_id; tasks.worker.verified_sender).
    # None: no verified sender, and nothing is believed of it (it is dead-lettered).
    sender: str | None = None
    # On a copy this domain made (retry rung, dead letter): the original sender it names, which
    # becomes `sender` only when this domain's record of the copy proves it (choreo.app.copies).
    claim: str | None = None
    # Replayed by the operator outside the dedup window, knowingly (the broker vouches the
    # operator published it: choreo.messaging.access.forced_by_operator): run even if stale.
    forced: bool = False


@dataclass
class _Item:
    """One delivery on its way through the batch: its `state` (tasks.outcome.State), moved only
    by the methods below, and what each state carries."""

    delivery: Delivery
    sub: Subscription | None
    state: State = State.OPEN
    envelope: Envelope | None = None  # set once decoded and believed
    looked_up: dict = field(default_factory=dict)
    error: Exception | None = None  # FAILED (and DEAD after its retries): the failure
    reason: str | None = None  # DEAD: why it is dead-lettered
    absorbed_by: str = ""  # ABSORBED: "redis" or "inbox"
    detail: str = ""  # REQUEUED: why
    emitted: list[Envelope] = field(default_factory=list)  # APPLIED: its staged events
    retry: tuple[int, float, str] | None = None  # (rung, delay, queue) of its retry copy
    span: Any = None  # its CONSUMER span (None: tracing off)
    outcome: Outcome | None = None  # set by _settle from the state

    def absorbed(self, by: str) -> None:
        self.state, self.absorbed_by = State.ABSORBED, by

    def applied(self, emitted: list[Envelope]) -> None:
        self.state, self.emitted = State.APPLIED, emitted

    def failed(self, error: Exception) -> None:
        self.state, self.error, self.emitted = State.FAILED, error, []

    def dead(self, reason: str) -> None:
        self.state, self.reason, self.emitted = State.DEAD, reason, []

    def requeued(self, detail: str) -> None:
        self.state, self.detail = State.REQUEUED, detail[:1000]

    # An item still open (`_open`) was decoded and believed: it has an envelope and a handler.
    @property
    def env(self) -> Envelope:
        assert self.envelope is not None, "an open item has its envelope"
        return self.envelope

    @property
    def handling(self) -> Subscription:
        assert self.sub is not None, "an open item has its handler"
        return self.sub

    @property
    def final(self) -> Outcome:
        assert self.outcome is not None, "every item is settled by now"
        return self.outcome


def register_domain(app: Celery) -> None:
    """One task per message type the app's domain hears (in the app's saga mode).

    The bodies run only when a task is called directly (`apply`); a worker hands its
    deliveries to `process_batch` (tasks.worker.BatchConsumer), so Celery's registry still
    names every type the domain takes, and its guard refuses any other name.
    """
    domain = app.domain
    # shared=False: Celery would otherwise hand these tasks to every app finalized later in the
    # same process, so a second domain's app would run this domain's handler under the same name.
    for type_ in subscriptions(app.settings.saga_mode)[domain]:
        app.task(
            name=type_, bind=True, typing=False, acks_late=True, ignore_result=True, shared=False
        )(_task_body(domain, type_))


def _task_body(domain: str, type_: str):
    def run(task, *args, **kwargs):
        # Called in process (no broker between caller and handler, so nobody to vouch): the
        # caller is this process's own code, trusted as the type's owner.
        sender = min(owners(type_), default=None)
        outcome = process_batch(
            runtime(task.app),
            [Delivery(type_, list(args), kwargs, str(task.request.id), sender=sender)],
        )[0]
        return {"outcome": outcome.kind, "detail": outcome.detail, "emitted": outcome.emitted}

    run.__name__ = run.__qualname__ = f"{domain}_{type_.replace('.', '_')}"
    return run


def process_batch(rt: Runtime, deliveries: list[Delivery]) -> list[Outcome]:
    """Process a batch; one outcome per delivery, in order. Never raises for a message's sake."""
    with logs.bound(domain=rt.domain):
        return _process(rt, deliveries)


def _process(rt: Runtime, deliveries: list[Delivery]) -> list[Outcome]:
    subs = subscriptions(rt.settings.saga_mode)[rt.domain]
    items = [_Item(d, subs.get(d.name)) for d in deliveries]
    queue = rt.names.queue(rt.domain)
    unchecked = failures.prove_claims(rt, [i.delivery for i in items])
    now = time.time()
    for item in items:
        if unchecked and item.delivery.claim:  # no proof either way, so no decision
            item.requeued(f"could not check the copy's record: {unchecked}")
        else:
            _decode(item)
            _check_window(item, now, rt.settings)
        item.span = spans.consumer_span(rt, item.delivery, item.envelope, queue)
    if rt.recorder is not None:
        rt.recorder.batch(len(items))
    _absorb_seen(rt, items)
    for item in _open(items):
        lookup = item.handling.lookup
        if lookup is not None:
            try:
                item.looked_up = lookup(item.env, rt.deps)
            except Exception as exc:
                item.failed(exc)
    _transaction(rt, items)
    _fault(rt, "after_commit")
    _publish(rt, items)
    for item in items:
        _settle(rt, item)
    _remember(rt, items)
    return [item.final for item in items]


def _open(items: list[_Item]) -> list[_Item]:
    """The items still to be decided."""
    return [i for i in items if i.state is State.OPEN]


def _decode(item: _Item) -> None:
    d = item.delivery
    try:
        if item.sub is None:
            raise PoisonMessage(f"no handler for {d.name!r} in this domain")
        if not isinstance(d.args, (list, tuple)) or len(d.args) != 1 or d.kwargs:
            raise PoisonMessage("expected exactly one positional argument, the envelope")
        envelope = decode(
            d.args[0]
        )  # validation only: nothing of it is believed before the sender is
        if envelope.type != d.name:
            raise PoisonMessage(
                f"envelope type {envelope.type!r} does not match message name {d.name!r}"
            )
        if not may_send(d.sender, d.name):
            who = (
                f"sender {d.sender!r}"
                if d.sender
                else f"a copy naming sender {d.claim!r} that this service has no record of making"
                if d.claim
                else "a message with no verified sender (AMQP user_id)"
            )
            raise PoisonMessage(
                f"unauthorized: {who} may not send {d.name!r} "
                f"(sent by {', '.join(sorted(owners(d.name))) or 'nobody'})"
            )
        if not speaks_for_itself(d.sender, d.name, envelope.payload):
            raise PoisonMessage(
                f"unauthorized: {d.sender!r} may not report another domain's dead letter "
                f"({envelope.payload.get('domain')!r})"
            )
        item.envelope = (
            envelope  # kept only when believed: a forgery causes no notice about its order
        )
    except PoisonMessage as exc:
        item.dead(f"poison: {exc}")


def _check_window(item: _Item, now: float, settings: Settings) -> None:
    """The dedup window's rule (choreo.app.window): a believed message that occurred longer ago
    than the window might find its dedup record gone, and one from further ahead than the clock
    skew allowed has an age that cannot be trusted: either is dead-lettered, not run, unless the
    operator forced its replay knowingly. No query: the envelope is at hand."""
    if item.state is not State.OPEN or item.envelope is None:
        return
    occurred = item.envelope.occurred_at
    if window_rule.outside(occurred, now, settings.dedup_window):
        why = window_rule.reason(occurred, now, settings.dedup_window)
    elif window_rule.ahead(occurred, now, settings.max_clock_skew):
        why = window_rule.reason_ahead(occurred, now, settings.max_clock_skew)
    else:
        return
    if item.delivery.forced:
        log.warning("running a message the operator forced knowingly (%s)", why)
        return
    item.dead(why)


def _absorb_seen(rt: Runtime, items: list[_Item]) -> None:
    todo = _open(items)
    seen = rt.idempotency.seen(rt.domain, [i.env.event_id for i in todo])
    for item, was_seen in zip(todo, seen, strict=True):
        if was_seen:
            item.absorbed("redis")


def _transaction(rt: Runtime, items: list[_Item]) -> None:
    """Step 4: every handler in one transaction, a savepoint each; dead letters recorded."""
    domain = rt.domain
    try:
        with Batch(rt.engine, domain) as batch:
            todo = _open(items)
            done = batch.processed_among(domain, [i.env.event_id for i in todo])
            for item in todo:
                if item.env.event_id in done:
                    item.absorbed("inbox")
                    continue
                _apply(rt, batch, item)
            for item in items:
                failures.decide(rt, item)
                if item.state is State.DEAD:
                    failures.record_dead_letter(batch, item)
                if (made := failures.made(item)) is not None:
                    batch.record_copy(made)
            _fault(rt, "before_commit")
            batch.commit()
    except Exception as exc:  # the database (or the commit itself) failed: nothing of it happened
        log.error("batch transaction of %d failed, nothing committed: %r", len(items), exc)
        for item in items:
            if item.state in (State.OPEN, State.APPLIED, State.FAILED):
                item.failed(item.error or exc)
                failures.decide(rt, item)
        for n, why in failures.record_alone(rt, items).items():
            items[n].requeued(f"the database failed: {why}")


def _apply(rt: Runtime, batch: Batch, item: _Item) -> None:
    env, handler = item.env, item.handling.handler
    for _ in range(OPTIMISTIC_RETRIES):
        try:
            with (
                logs.bound(**_context(item)),
                batch.message(
                    env, consumer=rt.domain, traceparent=tracing.traceparent_of(item.span)
                ) as uow,
            ):
                handler(env, uow, rt.deps, **item.looked_up)
            item.applied(uow.pending)
            return
        except IntegrityError as exc:
            # A concurrent delivery of the same event, or a concurrent append at our version:
            # the savepoint is gone; look again (the inbox tells which it was) and decide again.
            if batch.processed_among(rt.domain, [env.event_id]):
                item.absorbed("inbox")
                return
            log.info("optimistic concurrency conflict, reloading: %s", str(exc.orig)[:120])
        except PoisonMessage as exc:
            item.dead(f"poison: {exc}")
            return
        except Exception as exc:  # every other failure goes to the retry ladder, then the DLQ
            item.failed(exc)
            return
    item.failed(RuntimeError(f"{OPTIMISTIC_RETRIES} conflicting writes in a row"))


def _publish(rt: Runtime, items: list[_Item]) -> None:
    """Step 5: one burst for the whole batch; an item whose publishes are not all confirmed is
    requeued."""
    messages: list[tuple[int, dict]] = []
    for n, item in enumerate(items):
        d = item.delivery
        link = {"parent_id": d.task_id, "root_id": d.root_id or d.task_id}
        if item.state is State.REQUEUED:
            continue  # back to the broker as it is: nothing of it is published
        if item.state is State.DEAD:
            messages += [(n, m) for m in failures.dead_letter_messages(rt, item)]
        elif item.state is State.FAILED:
            messages.append((n, failures.retry_message(rt, item)))
        else:
            messages += [(n, event_message(rt.names, e, **link)) for e in item.emitted]
    hook = _burst_fault(rt) if rt.faults is not None else None
    producing = spans.producer_spans(rt, [(items[n].span, kw) for n, kw in messages])
    failed = rt.burst.run(messages, before_each=hook)
    spans.end_producers(producing, [n in failed for n, _kw in messages])
    for n in failed:
        items[n].requeued("the broker did not confirm its publishes; requeued")
    _fault(rt, "after_publish")
    sent = [e.event_id for n, item in enumerate(items) if n not in failed for e in item.emitted]
    try:
        mark_sent(rt.engine, sent)
    except Exception as exc:  # the relay publishes them again later: duplicates, absorbed
        log.warning("could not mark %d event(s) sent: %r", len(sent), exc)


def _settle(rt: Runtime, item: _Item) -> None:
    """The outcome of a message from its state, its log line and its span's end."""
    received = item.delivery.received_ns
    done = {"duration_ms": round((time.time_ns() - received) / 1e6, 3)} if received else {}
    with logs.bound(**_context(item), **done):
        item.outcome = _outcome(rt, item)
    kind = item.outcome.kind
    spans.finish(
        item.span,
        kind,
        retry=item.retry if kind == Kind.RETRY else None,
        error=item.error,
        reason=item.reason if kind in (Kind.POISON, Kind.DEAD_LETTERED) else None,
        compensation=failures.compensation(item) and kind == Kind.PROCESSED,
        duplicate_of=item.absorbed_by or None,
    )


def _outcome(rt: Runtime, item: _Item) -> Outcome:
    """What the state comes to, logged once."""
    if item.state is State.REQUEUED:
        log.error("requeueing: %s", item.detail)
        return Outcome(Kind.REQUEUE, item.detail)
    if item.state is State.DEAD:
        return _dead_lettered(rt, item)
    if item.state is State.FAILED:
        return _retried(rt, item)
    if item.state is State.ABSORBED:
        detail = f"duplicate absorbed ({item.absorbed_by})"
        log.info(detail)
        return Outcome(Kind.DUPLICATE, detail)
    assert item.state is State.APPLIED, f"an item left {item.state} undecided"
    emitted = [e.type for e in item.emitted]
    log.info("processed", extra={"emitted": ",".join(emitted)})
    return Outcome(Kind.PROCESSED, emitted=emitted)


def _dead_lettered(rt: Runtime, item: _Item) -> Outcome:
    reason = item.reason or "dead-lettered"
    where = rt.names.dlq(rt.domain)
    comp = failures.compensation(item)
    log.log(
        logging.CRITICAL if comp else logging.ERROR,
        "dead-lettered to %s: %s",
        where,
        reason,
        extra={"alert": "compensation_failed" if comp else "dead_letter"},
    )
    kind = Kind.POISON if reason.startswith("poison") else Kind.DEAD_LETTERED
    return Outcome(kind, f"DeadLettered('dead-lettered to {where}: {reason}')"[:1000])


def _retried(rt: Runtime, item: _Item) -> Outcome:
    assert item.retry is not None, "a failed item's retry copy was sent"
    n, delay, queue = item.retry
    most = rt.settings.retry_max_attempts
    log.warning(
        "transient failure, retry %d/%d in %.2fs via %s: %r", n, most, delay, queue, item.error
    )
    return Outcome(
        Kind.RETRY, f"retry {n}/{most} in {delay:.2f}s via {queue}: {item.error!r}"[:1000]
    )


def _remember(rt: Runtime, items: list[_Item]) -> None:
    """Step 7: the idempotency keys of what this service has applied, and the counters."""
    kinds = [i.final.kind for i in items]
    keys = [
        i.env.event_id
        for i in items
        if i.state is State.APPLIED or (i.state is State.ABSORBED and i.absorbed_by == "inbox")
    ]
    rt.idempotency.remember(
        rt.domain,
        keys,
        {
            "processed": kinds.count(Kind.PROCESSED),
            "duplicates": kinds.count(Kind.DUPLICATE),
            "retries": kinds.count(Kind.RETRY),
            "dead_lettered": kinds.count(Kind.DEAD_LETTERED) + kinds.count(Kind.POISON),
        },
    )


def _context(item: _Item) -> dict:
    """What every log line about this message carries (the domain is bound per worker)."""
    env, d = item.envelope, item.delivery
    span = (
        {
            "trace_id": f"{item.span.get_span_context().trace_id:032x}",
            "span_id": tracing.span_id_of(item.span),
        }
        if item.span is not None
        else {}
    )
    if env is None:
        return {"event_type": d.name, "event_id": d.task_id, "attempt": d.attempt, **span}
    return {
        "event_type": env.type,
        "event_id": env.event_id,
        "order_id": env.order_id,
        "correlation_id": env.correlation_id,
        "trace_id": env.trace_id,
        "attempt": d.attempt,
        **span,
    }


def _fault(rt: Runtime, point: str) -> None:
    """A test's hook at `point` of a batch (tasks.faults); rt.faults is None in production."""
    if rt.faults is not None:
        rt.faults.at(point)


def _burst_fault(rt: Runtime):
    def before_each(n: int, total: int) -> None:
        if n == total // 2:
            _fault(rt, "mid_burst")

    return before_each
