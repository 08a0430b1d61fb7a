"""Who owns which message type, who a broker user is, what each grant lets through, and the
secrets behind them (choreo.messaging.access, choreo.infra.secrets): no broker here."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import re
import stat

import pytest

from choreo.infra import secrets
from choreo.messaging import access
from config.settings import DOMAINS, Settings
from models.envelope import PAYLOADS


@pytest.fixture
def settings(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith(("CHOREO_BROKER_PASSWORD_", "CHOREO_USERS_TOKEN_")):
            monkeypatch.delenv(name)
    return Settings(
        run_dir=tmp_path / "run",
        broker_url="amqp://boot:strap@10.0.0.5:5673/shop",
        broker_user_prefix="t-",
    )


HEARS = {
    "order": {"place_order", "payment.completed", "saga.dead_lettered"},
    "payment": {"order.placed"},
    "inventory": {"payment.completed"},
    "shipment": {"inventory.reserved"},
    "notification": {"order.completed"},
    "orchestrator": {"order.placed"},
}


def test_every_type_has_exactly_the_owners_the_contract_gives_it():
    table = {t: access.owners(t) for t in PAYLOADS}
    assert all(table.values()), [
        t for t, o in table.items() if not o
    ]  # nobody may send an ownerless type
    assert table["place_order"] == {"operator", "client"}
    assert table["payment.completed"] == {"payment"} and table["order.placed"] == {"order"}
    assert table["reserve_stock"] == {"orchestrator"}
    assert table["saga.dead_lettered"] == {*DOMAINS, "orchestrator"}
    assert access.owners("paymnet.completed") == set() and access.owners("payment") == set()
    assert not access.may_send(None, "payment.completed") and not access.may_send(
        "operator", "payment.completed"
    )


def test_a_broker_user_is_a_service_only_under_the_prefix(settings):
    assert access.service_of(settings, "t-payment") == "payment"
    assert access.service_of(settings, "payment") is None  # not ours
    assert access.service_of(settings, "t-root") is None  # ours by name, not a service
    assert access.service_of(settings, None) is None


def test_a_copy_of_its_own_names_a_sender_it_must_still_prove(settings):
    own = "t-inventory"
    assert access.verified_sender(settings, "inventory", "t-payment", {}) == ("payment", None)
    # A retry rung or a dead letter moved back: published by the domain itself (or by anyone with
    # its password), naming who sent the original: a claim, no sender until the copy's record
    # proves it.
    assert access.verified_sender(settings, "inventory", own, access.sender_header("payment")) == (
        None,
        "payment",
    )
    assert access.verified_sender(settings, "inventory", own, access.sender_header(None)) == (
        None,
        None,
    )
    assert access.verified_sender(settings, "inventory", own, {"x-choreo-sender": b"payment"}) == (
        None,
        "payment",
    )
    assert access.verified_sender(settings, "inventory", own, {"x-choreo-sender": "root"}) == (
        None,
        None,
    )
    # Its own fresh message (the order hears its own saga.dead_lettered).
    assert access.verified_sender(settings, "inventory", own, {}) == ("inventory", None)
    # Another service's header is never even a claim: only the broker-checked user_id counts.
    assert access.verified_sender(
        settings, "inventory", "t-operator", access.sender_header("payment")
    ) == ("operator", None)
    assert access.verified_sender(settings, "inventory", None, access.sender_header("payment")) == (
        None,
        None,
    )


def _allows(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def test_each_domain_may_say_its_own_types_and_hear_only_its_bindings(settings):
    g = access.grants(settings, HEARS)
    write, read = g["payment"].topics["choreo.events"]
    assert _allows(write, "payment.completed") and _allows(write, "saga.dead_lettered")
    for foreign in (
        "order.completed",
        "inventory.reserved",
        "place_order",
        "charge_payment",
        "payment.completedX",
    ):
        assert not _allows(write, foreign), foreign
    assert _allows(read, "order.placed") and not _allows(read, "payment.completed")
    assert _allows(g["payment"].topics["choreo.dlx"][0], "payment")
    assert not _allows(g["payment"].topics["choreo.dlx"][0], "inventory")
    assert _allows(g["payment"].topics["choreo.retry"][0], "payment.2")
    assert not _allows(g["payment"].topics["choreo.retry"][0], "inventory.2")
    # Queues: its own to consume; no other domain's, no DLQ; declares only Celery's own.
    assert _allows(g["payment"].read, "choreo.payment")
    for name in ("choreo.inventory", "choreo.payment.dlq", "choreo.payment.retry.1", "amq.default"):
        assert not _allows(g["payment"].read, name), name
    assert _allows(g["payment"].configure, "payment@host.example.celery.pidbox")
    for name in ("choreo.payment", "choreo.events", "order@host.celery.pidbox", "my-queue"):
        assert not _allows(g["payment"].configure, name), name
    assert not _allows(
        g["payment"].write, "amq.default"
    )  # the default exchange reaches every queue by name


def test_the_operator_places_orders_and_reads_dead_letters_only(settings):
    g = access.grants(settings, HEARS)["operator"]
    assert _allows(g.topics["choreo.events"][0], "place_order")
    assert not _allows(g.topics["choreo.events"][0], "payment.completed")
    assert _allows(g.read, "choreo.payment.dlq") and _allows(g.read, "choreo.unrouted")
    assert not _allows(g.read, "choreo.payment") and not _allows(g.write, "choreo.dlx")
    # A forced replay's copy: to each domain's first retry rung, nowhere else on that exchange.
    assert _allows(g.write, "choreo.retry") and _allows(g.topics["choreo.retry"][0], "payment.1")
    for key in ("payment.2", "payment", "unknown.1"):
        assert not _allows(g.topics["choreo.retry"][0], key), key
    # It hears outcomes on queues the broker names, bound to the outcome keys only.
    assert _allows(g.configure, "amq.gen-Xr4_q1") and not _allows(g.configure, "my-queue")
    assert _allows(g.write, "amq.gen-Xr4_q1") and _allows(g.read, "amq.gen-Xr4_q1")
    assert _allows(g.read, "choreo.events")
    hear = g.topics["choreo.events"][1]
    assert all(_allows(hear, k) for k in access.OUTCOMES)
    for key in ("payment.completed", "order.placed", "order.expired", "#", "order.*"):
        assert not _allows(hear, key), key
    assert set(access.OUTCOMES) <= set(PAYLOADS)
    flower = access.grants(settings, HEARS)["flower"]
    assert not _allows(flower.write, "choreo.events") and _allows(flower.read, "celeryev.1f2e")


def test_a_client_places_orders_and_hears_outcomes_only(settings):
    g = access.grants(settings, HEARS)["client"]
    write, hear = g.topics["choreo.events"]
    assert _allows(write, "place_order") and not _allows(write, "order.completed")
    assert all(_allows(hear, k) for k in access.OUTCOMES) and not _allows(hear, "order.placed")
    assert _allows(g.configure, "amq.gen-Xr4_q1") and not _allows(g.configure, "celeryev")
    for name in ("choreo.order.dlq", "choreo.unrouted", "choreo.notification", "celeryev"):
        assert not _allows(g.read, name), name
    assert not _allows(g.write, "celeryev") and g.topics["celeryev"] == (access.NOTHING,) * 2


def test_a_namespace_changes_every_name(settings):
    s = settings.model_copy(update={"namespace": "shop"})
    assert access.user_name(s, "payment") == "t-shop-payment"  # its own users: grants never collide
    assert (
        access.service_of(s, "t-shop-payment") == "payment"
        and access.service_of(s, "t-payment") is None
    )
    g = access.grants(s, HEARS)["payment"]
    assert (
        "shop.events" in g.topics
        and _allows(g.read, "shop.payment")
        and not _allows(g.read, "choreo.payment")
    )
    assert _allows(g.configure, "payment.shop@h.celery.pidbox")


def test_definitions_carry_hashes_rabbitmq_accepts_and_no_password(settings):
    doc = access.definitions(settings, HEARS)
    assert {u["name"] for u in doc["users"]} == {f"t-{s}" for s in access.SERVICES}
    assert {p["vhost"] for p in doc["permissions"]} == {"shop"}
    text = json.dumps(doc)
    for service in access.SERVICES:
        pw = access.password(settings, service)
        assert pw not in text
        user = next(u for u in doc["users"] if u["name"] == f"t-{service}")
        raw = base64.b64decode(user["password_hash"])
        assert hashlib.sha256(raw[:4] + pw.encode()).digest() == raw[4:]


def test_a_service_url_keeps_the_address_and_swaps_the_user(settings):
    url = access.service_url(settings, "order")
    assert url.startswith("amqp://t-order:") and url.endswith("@10.0.0.5:5673/shop")
    assert "strap" not in url
    with pytest.raises(ValueError):
        access.service_url(settings, "root")


def test_a_cluster_url_list_keeps_every_node_and_swaps_the_user_on_each(settings):
    from choreo.messaging.admin import connection_parameters
    from tasks.app import make_app

    nodes = "amqp://boot:strap@127.0.0.1:5701/shop;amqp://boot:strap@127.0.0.1:5702/shop; amqp://boot:strap@[::1]:5703/shop"
    cluster = settings.model_copy(update={"broker_url": nodes})
    urls = access.service_url(cluster, "payment").split(";")
    assert [u.rsplit("@", 1)[1] for u in urls] == [
        "127.0.0.1:5701/shop",
        "127.0.0.1:5702/shop",
        "[::1]:5703/shop",
    ]
    assert all(u.startswith("amqp://t-payment:") and "strap" not in u for u in urls)
    assert access.vhost_of(nodes) == "shop"
    params = connection_parameters(access.service_url(cluster, "payment"))
    assert sorted(p.port for p in params) == [5701, 5702, 5703]
    assert {p.credentials.username for p in params} == {"t-payment"} and {
        p.virtual_host for p in params
    } == {"shop"}
    app = make_app("payment", cluster)
    alternates = app.connection_for_write().alt
    assert sorted(a.rsplit("@", 1)[1] for a in alternates) == sorted(
        u.rsplit("@", 1)[1] for u in urls
    )
    assert app.conf.broker_failover_strategy == "round-robin"
    # Each process starts on a node of its own drawing: the workers spread over the cluster.
    firsts = {make_app("payment", cluster).connection_for_write().host for _ in range(30)}
    assert len(firsts) > 1
    with pytest.raises(ValueError, match="empty"):
        access.broker_urls(" ; ")


def test_a_secret_comes_from_the_environment_first(settings, monkeypatch):
    monkeypatch.setenv("CHOREO_BROKER_PASSWORD_ORDER", "from-env")
    assert access.password(settings, "order") == "from-env"
    assert not (settings.run_dir / "secrets" / "broker-password-order").exists()


def test_a_generated_secret_is_owner_only_and_stable(settings):
    first = access.password(settings, "payment")
    path = settings.run_dir / "secrets" / "broker-password-payment"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert access.password(settings, "payment") == first and len(first) >= 32
    secrets.rotate(settings.run_dir, access.PASSWORD, "payment")
    assert access.password(settings, "payment") != first
    assert secrets.secret(settings.run_dir, "nothing", "here", create=False) is None


def _race(run_dir, out):
    out.put(secrets.secret(run_dir, "race", "x"))


def test_processes_starting_together_agree_on_one_secret(tmp_path):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(tmp_path, out)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    values = {out.get(timeout=5) for _ in procs}
    assert len(values) == 1
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == [
        "race-x"
    ]  # no temporary file left


def test_the_operator_neither_writes_nor_configures_flowers_events(settings):
    """Clients send Flower no task.sent (tasks.app): the operator needs no celeryev right, and
    without one it cannot bind the events exchange there to show outcomes to Flower."""
    g = access.grants(settings, HEARS)["operator"]
    assert not _allows(g.configure, "celeryev") and not _allows(g.write, "celeryev")
    assert g.topics["celeryev"] == (access.NOTHING,) * 2
