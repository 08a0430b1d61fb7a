"""Publishing: events as Celery protocol-2 task messages, persistent, with publisher confirms.

An event `payment.completed` is a task message named `payment.completed` sent to the topic
exchange with routing key `payment.completed`: every domain bound to that key gets a copy,
and each runs its own task of that name. Flower shows the type and the domain's worker.
"""
from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from choreo.messaging.topology import Names
from choreo.messaging.wire import flower_argsrepr
from models.envelope import Envelope

# kombu's retry policy for a publish whose connection dropped (e.g. a broker restart).
RETRY_POLICY = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


class Publisher:
    def __init__(self, app: Celery, names: Names) -> None:
        self.app = app
        self.names = names

    def publish(self, envelope: Envelope) -> None:
        """Returns once the broker confirmed the message (confirm_publish is on)."""
        self.send(envelope.type, [envelope.to_wire()], {}, task_id=envelope.event_id,
                  exchange=self.names.events, routing_key=envelope.type,
                  headers={"choreo_order_id": envelope.order_id, "choreo_correlation_id": envelope.correlation_id})

    def send(self, name: str, args: Any, kwargs: Any, *, task_id: str, exchange: str | None = None,
             routing_key: str | None = None, queue: str | None = None, headers: dict | None = None,
             expiration: float | None = None, argsrepr: str | None = None, message_id: str | None = None) -> None:
        """Send a task message to an exchange + routing key, or straight to a queue by name.

        `argsrepr` is what Flower shows as the arguments; Celery would otherwise build a
        saferepr of the whole envelope for every message.
        """
        options: dict[str, Any] = {}
        argsrepr = argsrepr if argsrepr is not None else flower_argsrepr(args)
        if argsrepr is not None:
            options["argsrepr"] = argsrepr
        if expiration is not None:
            options["expiration"] = expiration
        if message_id:
            options["message_id"] = message_id  # a client's own id for its message, kept on copies
        if queue is not None:
            # Through the default exchange; the queue is declared by the topology, not per message.
            options["queue"] = Queue(queue, no_declare=True)
        else:
            options.update(exchange=exchange, routing_key=routing_key)
        self.app.send_task(
            name, args=args, kwargs=kwargs, task_id=task_id, headers=headers or {},
            retry=True, retry_policy=RETRY_POLICY, delivery_mode=2,
            # Celery would otherwise route via the app's default queue and declare it on
            # every new connection: topology is declared once, by choreo.messaging.topology.
            declare=[], **options,
        )
