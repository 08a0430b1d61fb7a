"""The topology on the broker is exactly what the subscription tables say, and declaring is
idempotent."""

from __future__ import annotations

import pytest

from tests.conftest import VHOST, rabbitmqctl
from tests.helpers import sqlite_pass_only

pytestmark = [pytest.mark.integration, sqlite_pass_only]


def _rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def test_queues_are_quorum_with_dlx_and_retry_rungs_dead_letter_back(settings):
    from config.settings import DOMAINS
    from consumers.registry import topology

    topology(settings).declare()  # second declaration (the fixture did one): must not fail
    rows = {
        r[0]: r
        for r in _rows(
            rabbitmqctl(
                "list_queues",
                "-p",
                VHOST,
                "--no-table-headers",
                "name",
                "type",
                "durable",
                "arguments",
            )
        )
    }
    ns = settings.namespace
    for d in DOMAINS:
        name, type_, durable, args = rows[f"{ns}.{d}"]
        assert (type_, durable) == ("quorum", "true")
        assert (
            f'"x-dead-letter-exchange","{ns}.dlx"' in args
            and f'"x-dead-letter-routing-key","{d}"' in args
        )
        _, type_, _, args = rows[f"{ns}.{d}.dlq"]
        assert type_ == "quorum"
        # A replay rejects a dead letter and the broker moves it back, at least once, as it was;
        # peeks never count toward a delivery limit that would move it by itself.
        assert (
            f'"x-dead-letter-routing-key","{ns}.{d}"' in args
            and '"x-dead-letter-exchange",[]' in args
        )  # "": rabbitmqctl shows []
        assert (
            '"x-dead-letter-strategy","at-least-once"' in args
            and '"x-delivery-limit",2147483647' in args
        )
        for k in range(1, settings.retry_max_attempts + 1):
            _, type_, durable, args = rows[f"{ns}.{d}.retry.{k}"]
            # Replicated like the rest (a classic rung lives and dies with one node), and back at
            # least once.
            assert (type_, durable) == ("quorum", "true")
            assert f'"x-message-ttl",{int(settings.retry_delay(k) * 1000)}' in args
            assert (
                f'"x-dead-letter-routing-key","{ns}.{d}"' in args
                and '"x-dead-letter-strategy","at-least-once"' in args
            )
    # Nothing else: no celery_delayed_* ladder, no stray queues from per-message declares.
    ours = {n for n in rows if n.startswith(f"{ns}.")}
    assert len(ours) == len(DOMAINS) * (2 + settings.retry_max_attempts) + 1  # + N.unrouted
    assert rows[f"{ns}.unrouted"][1] == "quorum"
    assert not [n for n in rows if n.startswith("celery_delayed")]


def test_bindings_match_the_subscription_tables(settings):
    from consumers.registry import topology

    rows = _rows(
        rabbitmqctl(
            "list_bindings",
            "-p",
            VHOST,
            "--no-table-headers",
            "source_name",
            "routing_key",
            "destination_name",
        )
    )
    actual = {(src, key, dst) for src, key, dst in rows if src.startswith(settings.namespace)}
    assert actual == topology(settings).expected_bindings()


def test_routing_follows_the_published_contract(settings):
    from consumers.registry import topology

    routing_keys = topology(settings).routing_keys
    # order.expired: the compensations of a saga whose deadline passed (docs/deadlines.md)
    assert routing_keys("payment") == [
        "inventory.failed",
        "order.expired",
        "order.placed",
        "shipment.failed",
    ]
    assert routing_keys("inventory") == ["order.expired", "payment.completed", "shipment.failed"]
    assert routing_keys("shipment") == ["inventory.reserved", "order.expired"]
    assert routing_keys("notification") == [
        "order.cancelled",
        "order.completed",
        "order.needs_attention",
    ]
    assert "place_order" in routing_keys("order") and "saga.dead_lettered" in routing_keys("order")
    assert "order.deadline" in routing_keys("order")  # its own timers, heard by it alone
    assert all("order.deadline" not in routing_keys(d) for d in ("payment", "inventory"))
    assert topology(settings).names.dlq("payment") == f"{settings.namespace}.payment.dlq"


def _older_choreo_declared(
    settings, tag: str, empty: tuple[str, dict], held: tuple[str, dict], refusal: str
) -> dict:
    """Declare two queues as an older choreo did (`held` with one message in it), run the set-up:
    it must refuse with `refusal`, keep the held message, and re-create the empty queue. Returns
    the namespace's queues (name -> (type, arguments), its namespace written N) as the set-up left
    them; cleans up after."""
    import pika

    from choreo.messaging.admin import connection_parameters
    from tests.helpers import own_namespace

    namespace = own_namespace(settings, tag)
    ns = namespace.settings.namespace
    conn = pika.BlockingConnection(connection_parameters(namespace.settings.broker_url))
    ch = conn.channel()
    for suffix, arguments in (empty, held):
        ch.queue_declare(f"{ns}.{suffix}", durable=True, arguments=arguments)
    ch.confirm_delivery()
    ch.basic_publish("", f"{ns}.{held[0]}", b"kept", pika.BasicProperties(delivery_mode=2))
    try:
        with pytest.raises(RuntimeError, match=refusal), namespace:
            pass
        assert ch.queue_declare(f"{ns}.{held[0]}", passive=True).method.message_count == 1
        rows = _rows(
            rabbitmqctl(
                "list_queues", "-p", VHOST, "--no-table-headers", "name", "type", "arguments"
            )
        )
        return {
            r[0].removeprefix(f"{ns}."): (r[1], r[2].replace(f'"{ns}.', '"N.'))
            for r in rows
            if r[0].startswith(f"{ns}.")
        }
    finally:
        ch.queue_delete(f"{ns}.{held[0]}")
        conn.close()
        with namespace:  # now it sets up, and cleans everything of the namespace on exit
            pass


def test_an_old_empty_dlq_gets_its_replay_route_and_one_holding_dead_letters_is_kept(settings):
    """A DLQ declared before replays moved messages back had no dead-letter target: the set-up
    re-creates it when empty, and refuses, deleting nothing, when it holds dead letters."""
    old = {"x-queue-type": "quorum"}
    queues = _older_choreo_declared(
        settings,
        "olddlq",
        ("order.dlq", old),
        ("payment.dlq", old),
        r"payment\.dlq holds 1 message",
    )
    assert '"x-dead-letter-routing-key","N.order"' in queues["order.dlq"][1]


def test_an_old_classic_retry_rung_is_re_created_empty_and_kept_while_it_holds_copies(settings):
    """Rungs were classic queues before they were replicated: the set-up re-creates an empty one
    as a quorum queue, and refuses, deleting nothing, while one still holds retry copies."""
    rung = {"x-queue-type": "classic", "x-message-ttl": 1000, "x-dead-letter-exchange": ""}
    # The held rung has no TTL, so its copy stays for the test to see.
    queues = _older_choreo_declared(
        settings,
        "oldrung",
        ("order.retry.1", rung),
        ("payment.retry.1", {"x-queue-type": "classic"}),
        r"payment\.retry\.1 holds 1 retry cop",
    )
    assert queues["order.retry.1"][0] == "quorum"
