"""The wire format around the envelope: Celery protocol-2 task messages and dead-letter headers.

A choreo message is a Celery task message whose one argument is the envelope
(models.envelope). Any AMQP client can build one (`celery_message`); the worker's protocol
guard (tasks.guard) checks every delivery against this shape.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

# The embed (third element of the body) every choreo message carries: no canvas, no callbacks.
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def celery_message(
    task: str, args: list, task_id: str | None = None, origin: str = "client"
) -> tuple[bytes, dict]:
    """(body, headers) of a protocol-2 task message, as any AMQP client can build it."""
    task_id = task_id or str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": origin,
    }
    return json.dumps([args, {}, EMBED]).encode(), headers


def flower_task_id(message_id: str, domain: str) -> str:
    """The uuid of a domain's delivery of a message in Flower's task events: one record per
    (message, consuming domain). Flower keys tasks by uuid alone, and an event two domains hear
    (inventory.failed: a refund in payment, a fact in order) is two tasks with their own
    outcomes. The worker's hostname is `<domain>@host` too; the message's id stays as it is."""
    return f"{message_id}@{domain}"


def flower_argsrepr(args: Any) -> str | None:
    """What Flower shows as a message's arguments: its order and correlation ids (the whole
    envelope is one `choreo order` or `choreo dlq peek` away). None for anything that is not
    one envelope (poison being dead-lettered): Celery's own repr then."""
    if (
        isinstance(args, (list, tuple))
        and len(args) == 1
        and isinstance(args[0], dict)
        and "order_id" in args[0]
    ):
        env = args[0]
        return (
            f"order={env.get('order_id')} correlation={env.get('correlation_id')} "
            f"event={env.get('event_id')}"
        )
    return None


def dead_letter_headers(
    reason: str,
    domain: str,
    attempts: int,
    compensation: bool,
    delivered: Any = 0,
    redelivered: bool = False,
) -> dict[str, Any]:
    """What a dead letter says about itself (the adapter's and the worker's raw path alike).

    `delivered` is the quorum queue's x-delivery-count as the message arrived: 0 for a first
    delivery, so a message dead-lettered at once shows no worker ever died holding it.
    """
    return {
        "x-choreo-reason": reason[:2000],
        "x-choreo-domain": domain,
        "x-choreo-attempts": attempts,
        "x-choreo-dead-lettered-at": datetime.now(UTC).isoformat(),
        "x-choreo-compensation": compensation,
        "x-choreo-delivery-count": delivered
        if isinstance(delivered, int) and not isinstance(delivered, bool)
        else 0,
        "x-choreo-redelivered": bool(redelivered),
    }
