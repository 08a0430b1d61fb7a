"""One Celery app per domain (its own queue, its own tasks), plus a client app for publishers."""

from __future__ import annotations

import random

from celery import Celery

from choreo.infra import tls
from choreo.messaging.access import broker_urls, service_url, user_name
from config.settings import Settings
from consumers.registry import topology
from tasks.adapter import register_domain
from tasks.worker import install


class ChoreoApp(Celery):
    """A Celery app that carries its settings, and for a worker app the domain it serves:
    the adapter, the consumer and the relay read both from the app that runs them."""

    def __init__(self, name: str, settings: Settings, service: str | None = None) -> None:
        domain = name if name in settings.domains else None
        # Who it is on the broker: a domain as itself, Flower as flower, any client as the operator.
        self.service = service or domain or ("flower" if name == "flower" else "operator")
        # A cluster's nodes in this process's own order: kombu starts on the first, so the
        # processes spread over the nodes, and on a failure goes round that order.
        nodes = broker_urls(service_url(settings, self.service))
        super().__init__(
            f"choreo.{name}",
            broker=";".join(random.sample(nodes, len(nodes))),
            set_as_current=False,
        )
        self.settings = settings
        self.domain: str | None = domain
        # Stamped on everything it publishes: the broker refuses any other
        # (choreo.messaging.access).
        self.user_id = user_name(settings, self.service)


def make_app(name: str, settings: Settings, service: str | None = None) -> ChoreoApp:
    """`name` is a domain (a worker app with its tasks) or any other word (a client app);
    `service`: the broker user it connects as, when not the one its name implies."""
    tls.check_broker(settings)  # one clear line for a broker certificate that cannot be verified
    topo = topology(settings)
    app = ChoreoApp(name, settings, service)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,  # nobody reads results: outcomes live in each service's database
        task_store_errors_even_if_ignored=False,
        # Late acks: a message is acked only after its effect is committed and its events
        # are published. A worker killed mid-task leaves it to be redelivered (duplicates are
        # certain, see celery#1628: every handler is idempotent).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        # Quorum queues have no global QoS (kombu#2469).
        worker_detect_quorum_queues=True,
        broker_transport_options={"confirm_publish": True},
        # amqps:// nodes: the broker verified against broker_ca_file (choreo.infra.tls).
        broker_use_ssl=tls.kombu_ssl(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=30,
        # A cluster's nodes (broker_url "a;b;c"): each process starts on a random one and, when
        # its node goes, reconnects to the next (kombu's failover); the broker redelivers what
        # was unacked, the outbox relay and the burst's requeue re-send what was unconfirmed.
        broker_failover_strategy="round-robin",
        task_default_delivery_mode="persistent",
        task_create_missing_queues=False,
        # A client app routes nothing by default: its default queue is the unrouted one, declared
        # (if Celery ever does) exactly as the topology declares it.
        # Declared by the set-up, never by a worker (its user may not): no_declare.
        task_queues=[
            _undeclared(
                topo.domain_queue(name) if name in settings.domains else topo.unrouted_queue()
            )
        ],
        task_default_queue=topo.names.queue(name)
        if name in settings.domains
        else topo.names.unrouted,
        task_default_exchange=topo.names.events,
        task_default_exchange_type="topic",
        # Flower: task events (received, started, succeeded, retried, failed) from every worker,
        # published without confirms (tasks.internals.ChoreoConsumer.connection_for_write). No
        # "sent" events: Celery's would carry the message's id, while each consuming domain's
        # record is `<id>@<domain>` (tasks.worker): a sent event would be a record of its own,
        # "sent" forever; a worker's would also ride the confirmed channel of every publish.
        # What waits unconsumed shows as queue depth (Flower's Broker tab, `choreo status`).
        worker_send_task_events=True,
        task_send_sent_event=False,
        event_queue_expires=60,
        event_queue_ttl=10,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Celery's step dies of a refused pidbox declare: tasks.remote's serves.
        worker_enable_remote_control=False,
    )
    if app.domain:
        register_domain(app)
        install(app)
    return app


def _undeclared(queue):
    queue.no_declare = True
    return queue
