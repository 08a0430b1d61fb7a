"""Remote-control commands that know the batch consumer (tasks.worker.BatchConsumer).

Registered through Celery's documented extension point for control commands
(`celery.worker.control.inspect_command` / `control_command`), under the names of the built-in
ones they replace in a choreo worker:

- `active_queues` lists the queue the batch consumer reads (Celery's own task consumer reads
  none), so `celery inspect active_queues` and Flower's Queues tab show what the worker consumes.
- `add_consumer` and `cancel_consumer` are refused: Celery's own consumer would run a queue's
  deliveries without the protocol guard and the sender check, and a choreo worker's queue is
  its domain's, started and stopped with the worker (`choreo up`, `choreo down`).
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command, inspect_command

REFUSED = "choreo workers consume their domain's queue only; start or stop the worker instead"


@inspect_command()
def active_queues(state: Any) -> list[dict]:
    """List the queues this worker consumes (its batch consumer's, and any of Celery's)."""
    consumer = state.consumer
    queues = list(getattr(consumer, "batch_queues", ()))
    if consumer.task_consumer:
        queues += list(consumer.task_consumer.queues)
    return [dict(queue.as_dict(recurse=True)) for queue in queues]


@control_command(
    args=[("queue", str), ("exchange", str), ("exchange_type", str), ("routing_key", str)],
    signature="<queue> [exchange [type [routing_key]]]",
)
def add_consumer(state: Any, queue: str, *_args: Any, **_options: Any) -> dict:
    """Refused in a choreo worker (its queue is its domain's)."""
    return {"error": f"add consumer {queue}: {REFUSED}"}


@control_command(args=[("queue", str)], signature="<queue>")
def cancel_consumer(state: Any, queue: str, **_options: Any) -> dict:
    """Refused in a choreo worker (its queue is its domain's)."""
    return {"error": f"cancel consumer {queue}: {REFUSED}"}
