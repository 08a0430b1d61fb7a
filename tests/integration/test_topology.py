"""The topology on the broker is exactly what the subscription tables say, and declaring is idempotent."""
from __future__ import annotations

import pytest

from tests.conftest import VHOST, rabbitmqctl

pytestmark = pytest.mark.integration


def _rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def test_queues_are_quorum_with_dlx_and_retry_rungs_dead_letter_back(settings):
    from consumers.registry import topology
    from config.settings import DOMAINS

    topology(settings).declare()  # second declaration (the fixture did one): must not fail
    rows = {r[0]: r for r in _rows(rabbitmqctl("list_queues", "-p", VHOST, "--no-table-headers",
                                               "name", "type", "durable", "arguments"))}
    ns = settings.namespace
    for d in DOMAINS:
        name, type_, durable, args = rows[f"{ns}.{d}"]
        assert (type_, durable) == ("quorum", "true")
        assert f'"x-dead-letter-exchange","{ns}.dlx"' in args and f'"x-dead-letter-routing-key","{d}"' in args
        _, type_, _, args = rows[f"{ns}.{d}.dlq"]
        assert type_ == "quorum"
        # A replay rejects a dead letter and the broker moves it back, at least once, as it was;
        # peeks never count toward a delivery limit that would move it by itself.
        assert f'"x-dead-letter-routing-key","{ns}.{d}"' in args and '"x-dead-letter-exchange",[]' in args  # "": rabbitmqctl shows []
        assert '"x-dead-letter-strategy","at-least-once"' in args and '"x-delivery-limit",2147483647' in args
        for k in range(1, settings.retry_max_attempts + 1):
            _, type_, durable, args = rows[f"{ns}.{d}.retry.{k}"]
            # Replicated like the rest (a classic rung lives and dies with one node), and back at least once.
            assert (type_, durable) == ("quorum", "true")
            assert f'"x-message-ttl",{int(settings.retry_delay(k) * 1000)}' in args
            assert f'"x-dead-letter-routing-key","{ns}.{d}"' in args and '"x-dead-letter-strategy","at-least-once"' in args
    # Nothing else: no celery_delayed_* ladder, no stray queues from per-message declares.
    ours = {n for n in rows if n.startswith(f"{ns}.")}
    assert len(ours) == len(DOMAINS) * (2 + settings.retry_max_attempts) + 1  # + N.unrouted
    assert rows[f"{ns}.unrouted"][1] == "quorum"
    assert not [n for n in rows if n.startswith("celery_delayed")]


def test_bindings_match_the_subscription_tables(settings):
    from consumers.registry import topology

    rows = _rows(rabbitmqctl("list_bindings", "-p", VHOST, "--no-table-headers",
                             "source_name", "routing_key", "destination_name"))
    actual = {(src, key, dst) for src, key, dst in rows if src.startswith(settings.namespace)}
    assert actual == topology(settings).expected_bindings()


def test_routing_follows_the_published_contract(settings):
    from consumers.registry import topology

    routing_keys = topology(settings).routing_keys
    assert routing_keys("payment") == ["inventory.failed", "order.placed", "shipment.failed"]
    assert routing_keys("inventory") == ["payment.completed", "shipment.failed"]
    assert routing_keys("shipment") == ["inventory.reserved"]
    assert routing_keys("notification") == ["order.cancelled", "order.completed"]
    assert "place_order" in routing_keys("order") and "saga.dead_lettered" in routing_keys("order")
    assert topology(settings).names.dlq("payment") == f"{settings.namespace}.payment.dlq"


def test_an_old_empty_dlq_gets_its_replay_route_and_one_holding_dead_letters_is_kept(settings):
    """A DLQ declared before replays moved messages back had no dead-letter target: the set-up
    re-creates it when empty, and refuses, deleting nothing, when it holds dead letters."""
    import pika
    from choreo.messaging.admin import connection_parameters
    from tests.helpers import own_namespace

    namespace = own_namespace(settings, "olddlq")
    s = namespace.settings
    conn = pika.BlockingConnection(connection_parameters(s.broker_url))
    ch = conn.channel()
    for d in ("order", "payment"):  # as an older choreo declared them
        ch.queue_declare(f"{s.namespace}.{d}.dlq", durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    ch.basic_publish("", f"{s.namespace}.payment.dlq", b"kept", pika.BasicProperties(delivery_mode=2))
    try:
        with pytest.raises(RuntimeError, match=r"payment\.dlq holds 1 message"):
            with namespace:
                pass
        assert ch.queue_declare(f"{s.namespace}.payment.dlq", passive=True).method.message_count == 1
        args = {r[0]: r[1] for r in _rows(rabbitmqctl("list_queues", "-p", VHOST, "--no-table-headers",
                                                     "name", "arguments"))}
        assert f'"x-dead-letter-routing-key","{s.namespace}.order"' in args[f"{s.namespace}.order.dlq"]
    finally:
        ch.queue_delete(f"{s.namespace}.payment.dlq")
        conn.close()
        with namespace:  # now it sets up, and cleans everything of the namespace on exit
            pass


def test_an_old_classic_retry_rung_is_re_created_empty_and_kept_while_it_holds_copies(settings):
    """Rungs were classic queues before they were replicated: the set-up re-creates an empty one
    as a quorum queue, and refuses, deleting nothing, while one still holds retry copies."""
    import pika
    from choreo.messaging.admin import connection_parameters
    from tests.helpers import own_namespace

    namespace = own_namespace(settings, "oldrung")
    s = namespace.settings
    conn = pika.BlockingConnection(connection_parameters(s.broker_url))
    ch = conn.channel()
    ch.queue_declare(f"{s.namespace}.order.retry.1", durable=True,  # as an older choreo declared it
                     arguments={"x-queue-type": "classic", "x-message-ttl": 1000, "x-dead-letter-exchange": "",
                                "x-dead-letter-routing-key": f"{s.namespace}.order"})
    # A classic rung still holding a copy (no TTL here, so it stays for the test to see).
    ch.queue_declare(f"{s.namespace}.payment.retry.1", durable=True, arguments={"x-queue-type": "classic"})
    ch.confirm_delivery()
    ch.basic_publish("", f"{s.namespace}.payment.retry.1", b"waiting", pika.BasicProperties(delivery_mode=2))
    try:
        with pytest.raises(RuntimeError, match=r"payment\.retry\.1 holds 1 retry cop"):
            with namespace:
                pass
        assert ch.queue_declare(f"{s.namespace}.payment.retry.1", passive=True).method.message_count == 1
        types = {r[0]: r[1] for r in _rows(rabbitmqctl("list_queues", "-p", VHOST, "--no-table-headers",
                                                      "name", "type"))}
        assert types[f"{s.namespace}.order.retry.1"] == "quorum"
    finally:
        ch.queue_delete(f"{s.namespace}.payment.retry.1")
        conn.close()
        with namespace:
            pass
