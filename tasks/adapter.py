"""The thin adapter every domain's tasks share: decode, dedupe, unit of work, publish, ack.

No business logic here. The outcomes it can have, as Flower shows them:
  SUCCESS  processed (state + outbox committed, events confirmed by the broker) or duplicate
  RETRY    a transient failure: a copy waits in the retry ladder (broker-side TTL), this one is acked
  FAILURE  dead-lettered: poison input at once, or a failure that outlived its retries
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from celery import Celery
from celery.exceptions import Reject, Retry
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from choreo.app.outbox import mark_sent
from choreo.app.uow import UnitOfWork
from choreo.infra import logs
from choreo.messaging.wire import dead_letter_headers
from consumers.base import Subscription
from consumers.registry import subscriptions
from models.envelope import Envelope, PoisonMessage, SagaDeadLettered, decode, derived_id, make_envelope
from models.tables import DeadLetter
from tasks.runtime import Runtime, runtime

log = logging.getLogger("choreo.adapter")
OPTIMISTIC_RETRIES = 10


class DeadLettered(Exception):
    """This message went to the domain's DLQ; the text says why."""


class ConcurrencyConflict(Exception):
    """Another writer kept winning the same aggregate version."""


def register_domain(app: Celery) -> None:
    """One task per message type the app's domain hears (in the app's saga mode)."""
    domain = app.domain
    # shared=False: Celery would otherwise hand these tasks to every app finalized later in the
    # same process, so a second domain's app would run this domain's handler under the same name.
    for type_, sub in subscriptions(app.settings.saga_mode)[domain].items():
        app.task(name=type_, bind=True, typing=False, acks_late=True, ignore_result=True, shared=False)(_task_body(domain, type_, sub))


def _task_body(domain: str, type_: str, sub: Subscription):
    def run(task, *args, **kwargs):
        return handle(task, domain, type_, sub, args, kwargs)
    run.__name__ = f"{domain}_{type_.replace('.', '_')}"
    run.__qualname__ = run.__name__
    return run


def handle(task, domain: str, type_: str, sub: Subscription, args: tuple, kwargs: dict) -> dict:
    rt = runtime(task.app)
    attempt = int(task.request.get("choreo_attempt") or 0)
    try:
        if len(args) != 1 or kwargs:
            raise PoisonMessage("expected exactly one positional argument, the envelope")
        envelope = decode(args[0])
        if envelope.type != type_:
            raise PoisonMessage(f"envelope type {envelope.type!r} does not match message name {type_!r}")
    except PoisonMessage as exc:
        dead_letter(rt, task, args, kwargs, f"poison: {exc}", attempt, None, sub.compensation)

    with logs.bound(domain=domain, event_type=envelope.type, event_id=envelope.event_id,
                    order_id=envelope.order_id, correlation_id=envelope.correlation_id,
                    trace_id=envelope.trace_id, attempt=attempt):
        if rt.idempotency.seen(domain, envelope.event_id):
            log.info("duplicate absorbed (redis)")
            rt.metrics.incr("duplicates", domain)
            return {"outcome": "duplicate", "by": "redis"}
        try:
            return process(rt, sub, envelope)
        except PoisonMessage as exc:
            dead_letter(rt, task, args, kwargs, f"poison: {exc}", attempt, envelope, sub.compensation)
        except Exception as exc:  # every other failure goes to the retry ladder, then the DLQ
            if attempt < rt.settings.retry_max_attempts:
                schedule_retry(rt, task, args, kwargs, attempt, exc)
            dead_letter(rt, task, args, kwargs, f"failed after {attempt + 1} attempts: {exc!r}",
                        attempt, envelope, sub.compensation)


def process(rt: Runtime, sub: Subscription, envelope: Envelope) -> dict:
    domain = rt.domain
    # A subscription's lookups (reads from other services) happen before the write lock is taken.
    looked_up = sub.lookup(envelope, rt.deps) if sub.lookup else {}
    for _ in range(OPTIMISTIC_RETRIES):
        try:
            with UnitOfWork(rt.engine, source=domain, cause=envelope) as uow:
                if uow.already_processed(domain, envelope.event_id):
                    rt.idempotency.remember(domain, envelope.event_id)
                    log.info("duplicate absorbed (inbox)")
                    rt.metrics.incr("duplicates", domain)
                    return {"outcome": "duplicate", "by": "inbox"}
                sub.handler(envelope, uow, rt.deps, **looked_up)
                uow.mark_processed(domain, envelope)
                emitted = uow.commit()
            break
        except IntegrityError as exc:
            # A concurrent delivery of the same event, or a concurrent append at our version:
            # reload and decide again (the inbox check above tells which it was).
            log.info("optimistic concurrency conflict, reloading: %s", str(exc.orig)[:120])
    else:
        raise ConcurrencyConflict(f"{OPTIMISTIC_RETRIES} conflicting writes in a row")
    _fault_crash_after_commit(rt)
    publish_committed(rt, emitted)
    rt.idempotency.remember(domain, envelope.event_id, count="processed")
    types = [e.type for e in emitted]
    log.info("processed", extra={"emitted": ",".join(types)})
    return {"outcome": "processed", "emitted": types}


def publish_committed(rt: Runtime, envelopes: list[Envelope]) -> None:
    """Publish what the transaction staged (confirmed), then mark it sent. A crash between the
    two leaves rows unsent: the relay publishes them again and consumers dedupe by event id."""
    for env in envelopes:
        rt.publisher.publish(env)
    mark_sent(rt.engine, [env.event_id for env in envelopes])


def schedule_retry(rt: Runtime, task, args, kwargs, attempt: int, exc: Exception) -> None:
    n = attempt + 1
    delay = rt.settings.retry_delay(n) * (1 - rt.settings.retry_jitter * random.random())
    queue = rt.names.retry(rt.domain, n)
    try:
        rt.publisher.send(task.name, list(args), kwargs, task_id=task.request.id, queue=queue,
                          headers={"choreo_attempt": n, "choreo_last_error": repr(exc)[:500]}, expiration=delay,
                          message_id=(task.request.properties or {}).get("message_id"))
    except Exception as pub_exc:
        log.error("could not schedule retry; requeueing: %r", pub_exc)
        raise Reject(f"retry publish failed: {pub_exc!r}", requeue=True) from None
    rt.metrics.incr("retries", rt.domain)
    log.warning("transient failure, retry %d/%d in %.2fs via %s: %r", n, rt.settings.retry_max_attempts, delay, queue, exc)
    # exc is named in the message, not attached: it crosses the prefork pipe and may not pickle.
    raise Retry(f"retry {n}/{rt.settings.retry_max_attempts} in {delay:.2f}s via {queue}: {exc!r}"[:1000], when=delay)


def dead_letter(rt: Runtime, task, args, kwargs, reason: str, attempt: int,
                envelope: Envelope | None, compensation: bool) -> None:
    """Copy to the DLQ with the reason in its headers, record it, tell the order; then raise."""
    names = rt.names
    event_id = envelope.event_id if envelope else str(task.request.id)
    headers = dead_letter_headers(reason, rt.domain, attempt + 1, compensation,
                                  getattr(task.request, "x-delivery-count", 0),
                                  (task.request.delivery_info or {}).get("redelivered", False))
    try:
        props = task.request.properties or {}
        rt.publisher.send(task.name, list(args), kwargs, task_id=str(task.request.id), exchange=names.dlx,
                          routing_key=rt.domain, headers=headers, message_id=props.get("message_id"))
        with Session(rt.engine) as s:
            if s.get(DeadLetter, event_id) is None:
                s.add(DeadLetter(event_id=event_id, type=task.name, order_id=envelope.order_id if envelope else None,
                                 reason=reason[:2000], attempts=attempt + 1, compensation=compensation))
                s.commit()
        if envelope is not None and envelope.type != "saga.dead_lettered":
            notice = make_envelope(
                "saga.dead_lettered", envelope.order_id,
                SagaDeadLettered(domain=rt.domain, event_type=envelope.type, event_id=envelope.event_id,
                                 reason=reason[:500], compensation=compensation),
                source=rt.domain, cause=envelope, event_id=derived_id(rt.domain, envelope.event_id, "dead_lettered"))
            rt.publisher.publish(notice)
    except Exception as pub_exc:
        log.error("could not dead-letter; requeueing: %r", pub_exc)
        raise Reject(f"dead-letter publish failed: {pub_exc!r}", requeue=True) from None
    rt.metrics.incr("dead_lettered", rt.domain)
    level = logging.CRITICAL if compensation else logging.ERROR
    log.log(level, "dead-lettered to %s: %s", names.dlq(rt.domain), reason,
            extra={"alert": "compensation_failed" if compensation else "dead_letter"})
    raise DeadLettered(f"dead-lettered to {names.dlq(rt.domain)}: {reason}")


def _fault_crash_after_commit(rt: Runtime) -> None:
    """Test hook (off unless configured): die like kill -9 between commit and publish."""
    s = rt.settings
    if s.fault_crash_after_commit == rt.domain and s.fault_marker:
        marker = Path(s.fault_marker)
        try:
            marker.unlink()
        except FileNotFoundError:
            return
        log.warning("fault injection: exiting hard after commit, before publish")
        os._exit(137)
