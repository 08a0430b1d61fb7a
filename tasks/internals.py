"""The only use choreo makes of Celery's and py-amqp's internals, each with the reason no public API
serves. tests/unit/test_internals.py checks every one against the installed versions and fails
loudly when an upgrade moves it: nothing here may break silently.

Everything else of the worker is on documented extension points: the batch consumer is a
`bootsteps.ConsumerStep` (tasks.worker.BatchConsumer) consuming with a kombu Consumer, and the
refusal of compressed bodies uses kombu's public compression registry.
"""

from __future__ import annotations

import select

from celery.worker import state
from celery.worker.consumer import Consumer

# Celery's step that declares 28 celery_delayed_* queues and exchanges on every worker start when
# a quorum queue is configured (its include_if): there is no setting to turn it off.
DELAYED_DELIVERY = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class ChoreoConsumer(Consumer):
    """Celery's worker consumer (the documented `worker_consumer` setting names it) with the two
    changes no setting makes; everything choreo does with deliveries is in tasks.worker.

    Without DelayedDelivery: choreo never uses ETA/countdown (celery#6760), retries wait in the
    broker's ladder, so its queues are never needed; and a domain's broker user may not declare
    them. The step is included whenever Celery sees a quorum queue, and the quorum queue must stay
    visible to Celery: it is what turns global QoS off on Celery's channel (kombu#2469).
    """

    class Blueprint(Consumer.Blueprint):
        default_steps = [s for s in Consumer.Blueprint.default_steps if s != DELAYED_DELIVERY]

    def connection_for_write(self, url=None, heartbeat=None):
        """The connection of the worker's event dispatcher (the only caller in the consumer: its
        Events step; there is no setting for that connection's transport options).

        Task events for Flower go to transient, auto-deleted monitor queues: losing one loses
        nothing. The app's transport options turn publisher confirms on for every channel, so
        each task-received/started/succeeded event would wait a broker round trip in the main
        process, and the bench measured that as the largest single cost per message. Events
        stay on; only their confirms go. Events (choreo's), retries and dead letters keep theirs.
        """
        return self.ensure_connected(
            self.app.connection_for_write(
                url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
            )
        )


def count_task(name: str) -> None:
    """Count one finished task as Celery's own request does (celery.worker.state): what
    `celery inspect stats` reports as `total`, and Flower's worker page with it. Celery has no
    public call that counts a task it did not run itself."""
    state.total_count[name] += 1
    state.all_total_count[0] += 1


def frames_waiting(connection) -> bool:
    """Whether more of the broker's frames are already waiting to be read on a kombu connection:
    bytes of a next frame py-amqp has read (its private `_read_buffer`, no public view of it), or
    bytes in the socket (py-amqp reads frames exactly, so the kernel keeps the rest). A heartbeat
    looks the same: the next tick sees the socket empty. False when there is no connection."""
    try:
        transport = connection.connection.transport
        if transport._read_buffer:
            return True
        return bool(select.select([transport.sock], [], [], 0)[0])
    except Exception:  # no connection to read from: nothing is waiting
        return False
