"""What a domain does with a delivery it could not finish: its retry copy, its dead letter and the
order's notice, and the records that let each copy's sender be believed when it comes back.

A copy goes out under the domain's own broker user, so the broker vouches only for that; the
sender of the original it names (`x-choreo-sender`) is proven by the record written in the same
transaction that decided the copy (choreo.app.copies). The adapter (tasks.adapter) calls these
with its batch items; they read and set the item's fields, nothing else.
"""

from __future__ import annotations

import logging
import random

from choreo.app import copies
from choreo.app.uow import Batch
from choreo.infra import tracing
from choreo.messaging.access import sender_header
from choreo.messaging.publisher import event_message
from choreo.messaging.wire import dead_letter_headers
from models.envelope import SagaDeadLettered, derived_id, make_envelope
from tasks.outcome import State
from tasks.runtime import Runtime

log = logging.getLogger("choreo.adapter")


def decide(rt: Runtime, item) -> None:
    """A failed message climbs the retry ladder, or past its last rung goes to the DLQ."""
    if item.state is not State.FAILED:
        return
    if item.delivery.attempt >= rt.settings.retry_max_attempts:
        item.dead(f"failed after {item.delivery.attempt + 1} attempts: {item.error!r}")


def compensation(item) -> bool:
    return bool(item.sub and item.sub.compensation)


# -- the proof of a copy's sender -------------------------------------------------------------


def prove_claims(rt: Runtime, deliveries: list) -> str | None:
    """A copy of its own this domain receives is believed to come from the sender it names
    (`delivery.sender` set to its `claim`) only when the domain's record of that copy says so:
    one read, only when copies are in the batch. Returns why the records could not be read (the
    database failed: the caller sends those copies back to the broker, undecided), else None."""
    claims = {
        n: copies.copy_of(d.task_id, d.claim, d.name, d.args, d.kwargs)
        for n, d in enumerate(deliveries)
        if d.claim
    }
    if not claims:
        return None
    try:
        found = copies.proven(rt.engine, claims.values())
    except Exception as exc:  # the database: no proof either way
        log.error(
            "could not read the records of %d cop(ies); requeueing them: %r", len(claims), exc
        )
        return repr(exc)
    for n, copy in claims.items():
        if copy in found:
            deliveries[n].sender = deliveries[n].claim
    return None


def made(item) -> copies.Made | None:
    """The record of the copy this item is about to become (None: it becomes none, or its sender
    is unverified, so its copy claims nobody and needs no proof)."""
    d = item.delivery
    if d.sender is None or item.state not in (State.DEAD, State.FAILED):
        return None
    kind = copies.DEAD_LETTER if item.state is State.DEAD else copies.RETRY
    return copies.Made(
        copies.copy_of(d.task_id, d.sender, d.name, d.args, d.kwargs), d.sender, kind, d.attempt + 1
    )


def record_alone(rt: Runtime, items: list) -> dict[int, str]:
    """The batch's transaction failed, and its copies' records with it: record them on their own.
    If that fails too (the database is down), a copy published now could never be proven, so its
    delivery goes back to the broker instead (the quorum queue's delivery limit bounds the
    redeliveries; past it the broker dead-letters the original, its own sender intact).
    Returns index -> why, for the items to requeue."""
    todo = {
        n: m
        for n, item in enumerate(items)
        if item.state is not State.REQUEUED and (m := made(item)) is not None
    }
    if not todo:
        return {}
    try:
        copies.record_now(rt.engine, list(todo.values()))
    except Exception as exc:
        log.error("could not record %d cop(ies) either; requeueing them: %r", len(todo), exc)
        return {n: repr(exc) for n in todo}
    return {}


def record_dead_letter(batch: Batch, item) -> None:
    env, d = item.envelope, item.delivery
    try:
        batch.record_dead_letter(
            env.event_id if env else d.task_id,
            d.name,
            env.order_id if env else None,
            item.reason,
            d.attempt + 1,
            compensation(item),
        )
    except Exception as exc:  # a record, not the message: the DLQ copy still carries the reason
        log.error("could not record dead letter %s: %r", d.task_id, exc)


# -- the copies ---------------------------------------------------------------------------------


def retry_message(rt: Runtime, item) -> dict:
    d, n = item.delivery, item.delivery.attempt + 1
    delay = rt.settings.retry_delay(n) * (1 - rt.settings.retry_jitter * random.random())
    item.retry = (n, delay, rt.names.retry(rt.domain, n))
    return {
        "name": d.name,
        "args": list(d.args),
        "kwargs": d.kwargs,
        "task_id": d.task_id,
        "exchange": rt.names.retry_exchange,
        "routing_key": rt.names.retry_key(rt.domain, n),
        "headers": {
            "choreo_attempt": n,
            "choreo_last_error": repr(item.error)[:500],
            **sender_header(d.sender),
        },
        "expiration": delay,
        "message_id": d.message_id,
    }


def dead_letter_messages(rt: Runtime, item) -> list[dict]:
    """The copy to the DLQ with the reason in its headers, and the order's notice."""
    d, env = item.delivery, item.envelope
    comp = compensation(item)
    headers = {
        **dead_letter_headers(
            item.reason, rt.domain, d.attempt + 1, comp, d.delivery_count, d.redelivered
        ),
        **sender_header(d.sender),
    }
    out = [
        {
            "name": d.name,
            "args": list(d.args) if isinstance(d.args, (list, tuple)) else d.args,
            "kwargs": d.kwargs,
            "task_id": d.task_id,
            "exchange": rt.names.dlx,
            "routing_key": rt.domain,
            "headers": headers,
            "message_id": d.message_id,
        }
    ]
    if env is not None and env.type != "saga.dead_lettered":
        notice = make_envelope(
            "saga.dead_lettered",
            env.order_id,
            SagaDeadLettered(
                domain=rt.domain,
                event_type=env.type,
                event_id=env.event_id,
                reason=item.reason[:500],
                compensation=comp,
            ),
            source=rt.domain,
            cause=env,
            event_id=derived_id(rt.domain, env.event_id, "dead_lettered"),
            traceparent=tracing.traceparent_of(item.span),
        )
        out.append(
            event_message(rt.names, notice, parent_id=d.task_id, root_id=d.root_id or d.task_id)
        )
    return out
