"""Unroutable messages are kept (alternate exchange), replayable once a subscriber binds, and an
exchange declared before the alternate exchange existed is upgraded in place."""

from __future__ import annotations

import pika
import pytest

from tests.conftest import VHOST, rabbitmqctl
from tests.helpers import sqlite_pass_only, wait_for

pytestmark = [pytest.mark.integration, sqlite_pass_only]


@pytest.fixture()
def own_namespace(settings):
    """A namespace of its own in the run's vhost, so the unrouted queue holds only this test's
    messages."""
    from tests.helpers import own_namespace

    with own_namespace(settings, "unr") as s:
        yield s


def _publish(settings, routing_key: str, message_id: str) -> None:
    """As a publisher no service is (the bootstrap user: a type nobody owns is refused to every
    service)."""
    from choreo.messaging.admin import BrokerAdmin
    from tests.helpers import celery_message

    body, headers = celery_message("late.subscriber.heard", [{"any": "envelope"}])
    with BrokerAdmin(settings, service=None) as admin:
        admin.publish_raw(routing_key, body, headers, message_id=message_id)


def test_a_message_nobody_hears_waits_in_unrouted_and_replays_to_a_late_subscriber(own_namespace):
    from choreo.messaging.admin import BrokerAdmin

    s = own_namespace
    _publish(s, "late.subscriber.heard", "m-1")
    with BrokerAdmin(s) as admin:
        (kept,) = admin.peek("unrouted", 10)
        assert (kept.message_id, kept.routing_key) == ("m-1", "late.subscriber.heard")
        unbound = f"nothing is bound to routing key 'late.subscriber.heard' on {s.namespace}.events"
        assert kept.reason == f"unrouted: {unbound}"
    # A subscriber deploys: a new binding. Replay (the operator's) sends the kept message to it.
    with BrokerAdmin(s, service=None) as deployer, BrokerAdmin(s) as admin:
        ch = deployer.conn.channel()
        ch.queue_declare("late-subscriber-" + s.namespace, exclusive=True)
        ch.queue_bind(
            "late-subscriber-" + s.namespace, f"{s.namespace}.events", "late.subscriber.heard"
        )
        assert [v.message_id for v in admin.replay("unrouted")] == ["m-1"]
        # The broker moves it (at least once, with its properties, user_id included).
        _method, props, _ = wait_for(
            lambda: (
                (got := ch.basic_get("late-subscriber-" + s.namespace, auto_ack=True))[0] and got
            ),
            10,
            what="the replayed message at the late subscriber",
        )
        assert props.message_id == "m-1"
        assert admin.peek("unrouted", 10) == []


def test_an_events_exchange_declared_without_the_alternate_exchange_is_upgraded(settings):
    from choreo.messaging.admin import connection_parameters
    from consumers.registry import topology
    from tests.helpers import own_namespace

    namespace = own_namespace(settings, "old")
    s = namespace.settings
    conn = pika.BlockingConnection(connection_parameters(s.broker_url))
    conn.channel().exchange_declare(
        f"{s.namespace}.events", "topic", durable=True
    )  # as before this change
    conn.close()
    with namespace:  # the set-up declares the topology
        topology(s).declare()  # and idempotent afterwards
        rows = rabbitmqctl("list_exchanges", "-p", VHOST, "name", "arguments", "--no-table-headers")
        (line,) = [r for r in rows.splitlines() if r.startswith(f"{s.namespace}.events\t")]
        assert f'"alternate-exchange","{s.namespace}.unrouted"' in line
        _publish(s, "nobody.hears.this", "m-2")
        from choreo.messaging.admin import BrokerAdmin

        with BrokerAdmin(s) as admin:
            assert [v.message_id for v in admin.peek("unrouted", 10)] == ["m-2"]
