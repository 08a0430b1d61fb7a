"""Least privilege against the real broker and the running stack: each service's user may say
only what it owns, read only its own queue and declare nothing of choreo's; a message claiming
another user is refused; a forged fact is refused by the broker or dead-lettered, and changes
no stock, shipment, charge or order; no secret shows in a log, in `choreo status` or the repo."""

from __future__ import annotations

import json
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from pika.exceptions import ChannelClosedByBroker
from sqlmodel import Session, select

from tests.helpers import celery_message, queues_idle, wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _refusal(settings, service, act) -> tuple[int, str]:
    """The broker's reply code and text when `service`'s user does `act(channel)`."""
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(settings, service=service) as admin:
        ch = admin.conn.channel()
        ch.confirm_delivery()
        with pytest.raises(ChannelClosedByBroker) as refused:
            act(ch)
        return refused.value.reply_code, refused.value.reply_text


def _forged(type_: str, order_id: str) -> tuple[bytes, dict]:
    from choreo.ops.scenarios import make_order
    from consumers.inventory.messages import InventoryReserved
    from consumers.payment.messages import PaymentCompleted
    from models.envelope import make_envelope

    spec = make_order("completed")
    order = {
        "customer_id": spec.customer_id,
        "items": spec.items,
        "address": spec.address,
        "amount_cents": 100,
    }
    payload = (
        PaymentCompleted(charge_id="ch-forged", amount_cents=100, order=order)
        if type_ == "payment.completed"
        else InventoryReserved(reservation_id="r-forged", order=order)
    )
    env = make_envelope(type_, order_id, payload, source=type_.split(".")[0])
    return celery_message(type_, [env.to_wire()], env.event_id)


def _publish(
    ch,
    settings,
    routing_key: str,
    body: bytes,
    headers: dict,
    user_id: str | None = None,
    exchange: str | None = None,
) -> None:
    import pika

    ch.basic_publish(
        f"{settings.namespace}.events" if exchange is None else exchange,
        routing_key,
        body,
        pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
            delivery_mode=2,
            user_id=user_id,
        ),
    )


@pytest.mark.parametrize("routing_key", ["order.completed", "inventory.reserved", "place_order"])
def test_the_payment_user_may_not_say_what_another_service_owns(settings, stack, routing_key):
    from choreo.messaging.access import user_name

    body, headers = _forged(
        "payment.completed", f"ord-never-{uuid.uuid4().hex[:8]}"
    )  # the broker reads no body
    code, text = _refusal(
        settings,
        "payment",
        lambda ch: _publish(
            ch, settings, routing_key, body, headers, user_name(settings, "payment")
        ),
    )
    assert code == 403 and "topic" in text.lower() and routing_key in text


@pytest.mark.parametrize("queue", ["inventory", "order.dlq", "payment.dlq", "unrouted"])
def test_the_payment_user_may_not_read_another_queue(settings, stack, queue):
    code, text = _refusal(
        settings, "payment", lambda ch: ch.basic_get(f"{settings.namespace}.{queue}")
    )
    assert code == 403 and f"{settings.namespace}.{queue}" in text


def test_the_payment_user_may_not_declare_bind_or_write_past_its_grants(settings, stack):
    ns = settings.namespace
    assert (
        _refusal(
            settings,
            "payment",
            lambda ch: ch.queue_declare(f"payment-extra-{uuid.uuid4().hex[:6]}"),
        )[0]
        == 403
    )
    assert (
        _refusal(
            settings, "payment", lambda ch: ch.exchange_declare(f"payment-x-{uuid.uuid4().hex[:6]}")
        )[0]
        == 403
    )
    # Its own queue may not be made to hear more (a binding needs write on the queue).
    assert (
        _refusal(
            settings,
            "payment",
            lambda ch: ch.queue_bind(f"{ns}.payment", f"{ns}.events", "payment.completed"),
        )[0]
        == 403
    )
    # The default exchange reaches any queue by name: no service may write to it.
    body, headers = _forged("payment.completed", f"ord-never-{uuid.uuid4().hex[:8]}")
    assert (
        _refusal(
            settings,
            "payment",
            lambda ch: _publish(ch, settings, f"{ns}.inventory", body, headers, exchange=""),
        )[0]
        == 403
    )
    # Nor to another domain's dead letters or retry rungs.
    assert (
        _refusal(
            settings,
            "payment",
            lambda ch: _publish(ch, settings, "inventory", body, headers, exchange=f"{ns}.dlx"),
        )[0]
        == 403
    )
    assert (
        _refusal(
            settings,
            "payment",
            lambda ch: _publish(ch, settings, "inventory.1", body, headers, exchange=f"{ns}.retry"),
        )[0]
        == 403
    )


LISTENERS = ["operator", "client"]  # the users a client program may be given (docs/client.md)


@pytest.mark.parametrize("user", LISTENERS)
@pytest.mark.parametrize(
    "routing_key", ["order.completed", "order.cancelled", "order.needs_attention"]
)
def test_a_client_hears_outcomes_on_a_server_named_queue_of_its_own(
    settings, stack, user, routing_key
):
    """What a client needs to hear how its orders end (docs/client.md): an exclusive queue the
    broker names, bound to an outcome key, consumed."""
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(settings, service=user) as admin:
        ch = admin.conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, f"{settings.namespace}.events", routing_key)
        tag = ch.basic_consume(queue, lambda *_: None)
        ch.basic_cancel(tag)
        assert queue.startswith("amq.gen-")
        ch.close()


@pytest.mark.parametrize("user", LISTENERS)
@pytest.mark.parametrize(
    "routing_key", ["payment.completed", "order.placed", "order.expired", "#", "order.*"]
)
def test_a_client_may_not_bind_to_hear_anything_else(settings, stack, user, routing_key):
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(settings, service=user) as admin:
        ch = admin.conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        with pytest.raises(ChannelClosedByBroker) as refused:
            ch.queue_bind(queue, f"{settings.namespace}.events", routing_key)
    assert refused.value.reply_code == 403 and "topic" in refused.value.reply_text.lower()


@pytest.mark.parametrize("user", LISTENERS)
def test_a_client_may_not_declare_a_named_queue_or_read_a_domain_s(settings, stack, user):
    ns = settings.namespace
    for name in (f"my-outcomes-{uuid.uuid4().hex[:6]}", f"{ns}.notification"):
        code, text = _refusal(settings, user, lambda ch, n=name: ch.queue_declare(n))
        assert code == 403 and name in text
    # "amq." names are the broker's to give: a client may not pick one to look like them.
    code, _ = _refusal(settings, user, lambda ch: ch.queue_declare("amq.gen-mine"))
    assert code == 403
    for queue in ("order", "payment", "notification"):
        code, text = _refusal(settings, user, lambda ch, q=queue: ch.basic_get(f"{ns}.{q}"))
        assert code == 403 and f"{ns}.{queue}" in text
    # Nor may it bind a domain's queue to hear more (a binding needs write on the queue).
    code, _ = _refusal(
        settings,
        user,
        lambda ch: ch.queue_bind(f"{ns}.notification", f"{ns}.events", "order.completed"),
    )
    assert code == 403


def test_the_client_user_reads_no_dead_letter_and_says_nothing_but_place_order(settings, stack):
    from choreo.messaging.access import user_name

    ns = settings.namespace
    for queue in (f"{ns}.order.dlq", f"{ns}.unrouted"):
        code, text = _refusal(settings, "client", lambda ch, q=queue: ch.basic_get(q))
        assert code == 403 and queue in text
    body, headers = _forged("payment.completed", f"ord-never-{uuid.uuid4().hex[:8]}")
    code, text = _refusal(
        settings,
        "client",
        lambda ch: _publish(
            ch, settings, "payment.completed", body, headers, user_name(settings, "client")
        ),
    )
    assert code == 403 and "payment.completed" in text


def test_a_message_claiming_another_user_is_refused(settings, stack):
    from choreo.messaging.access import user_name

    body, headers = _forged("payment.completed", f"ord-never-{uuid.uuid4().hex[:8]}")
    for claimed in (user_name(settings, "inventory"), user_name(settings, "payment")):
        code, text = _refusal(
            settings,
            "operator",
            lambda ch, claimed=claimed: _publish(
                ch, settings, "place_order", body, headers, claimed
            ),
        )
        assert code == 406 and "user_id" in text
    # On a key that is not the user's to write, the topic permission refuses it first
    # (docs/security.md).
    code, text = _refusal(
        settings,
        "operator",
        lambda ch: _publish(
            ch, settings, "payment.completed", body, headers, user_name(settings, "payment")
        ),
    )
    assert code == 403 and "payment.completed" in text


def test_an_unbound_key_is_refused_for_the_operator_not_kept_in_unrouted(settings, stack):
    """The client user of docs/client.md may say place_order and nothing else: a typo is a 403
    that closes the channel, not a message in choreo.unrouted (that catches keys a user may
    write but nothing binds)."""
    body, headers = celery_message("place_ordr", [{}], str(uuid.uuid4()))
    code, text = _refusal(
        settings, "operator", lambda ch: _publish(ch, settings, "place_ordr", body, headers)
    )
    assert code == 403 and "place_ordr" in text


def test_a_place_order_without_user_id_is_taken_by_the_broker_and_dead_lettered(settings, stack):
    """user_id is optional in AMQP: the broker checks it only when present. Any user that may write
    place_order can send one without it; the order service believes no sender, so it
    dead-letters it."""
    from choreo.messaging.admin import BrokerAdmin
    from tests.helpers import place_order

    env = place_order()
    body, headers = celery_message("place_order", [env], env["event_id"])
    with BrokerAdmin(settings) as admin:  # the operator's user, no user_id
        admin.publish_raw("place_order", body, headers, user_id=None)

    def letter():
        with BrokerAdmin(settings) as admin:
            return next(
                (v for v in admin.peek("order", 10_000) if v.event_id == env["event_id"]), None
            )

    dead = wait_for(letter, 30, what="the order without user_id in the order DLQ")
    assert dead.reason.startswith("poison: unauthorized: a message with no verified sender"), (
        dead.reason
    )
    assert _effects(settings, env["order_id"])["OrderView"] == 0


def _effects(settings, order_id: str) -> dict:
    from choreo.infra.db import engine_for
    from consumers.inventory.tables import Reservation
    from consumers.notification.tables import Notification
    from consumers.order.tables import OrderView
    from consumers.payment.tables import Charge
    from consumers.shipment.tables import Shipment
    from models.tables import Inbox

    out = {}
    for service, model in (
        ("inventory", Reservation),
        ("shipment", Shipment),
        ("payment", Charge),
        ("order", OrderView),
        ("notification", Notification),
        ("inventory", Inbox),
        ("shipment", Inbox),
    ):
        with Session(engine_for(settings, service)) as s:
            out[model.__name__] = out.get(model.__name__, 0) + len(
                s.exec(select(model).where(model.order_id == order_id)).all()
            )
    return out


def _stock(settings) -> dict:
    from choreo.infra.db import engine_for
    from consumers.inventory.tables import Stock

    with Session(engine_for(settings, "inventory")) as s:
        return {r.sku: (r.available, r.reserved) for r in s.exec(select(Stock))}


def test_a_forged_payment_completed_changes_nothing(settings, stack):
    """The issue's attack: a payment.completed for an order never placed. With the operator's
    credentials the broker refuses it; sent with no verified sender straight into the inventory
    and shipment queues (as only a broker administrator could), it is dead-lettered with its
    reason; replayed by the operator, it is dead-lettered again. No stock, shipment or order."""
    from choreo.messaging.access import user_name
    from choreo.messaging.admin import BrokerAdmin
    from choreo.ops import replay as rp
    from choreo.ops.audit import run_audit

    order_id = f"ord-forged-{uuid.uuid4().hex[:8]}"
    queues_idle(settings)
    stock = _stock(settings)
    body, headers = _forged("payment.completed", order_id)
    event_id = headers["id"]

    code, text = _refusal(
        settings,
        "operator",
        lambda ch: _publish(
            ch, settings, "payment.completed", body, headers, user_name(settings, "operator")
        ),
    )
    assert code == 403 and "payment.completed" in text

    ns = settings.namespace
    reserved_body, reserved_headers = _forged("inventory.reserved", order_id)
    with BrokerAdmin(settings, service=None) as admin:
        admin.publish_raw(f"{ns}.inventory", body, headers, exchange="", user_id=None)
        admin.publish_raw(
            f"{ns}.shipment", reserved_body, reserved_headers, exchange="", user_id=None
        )

    def letter(domain, eid):
        with BrokerAdmin(settings) as admin:
            return next((v for v in admin.peek(domain, 10_000) if v.event_id == eid), None)

    inv = wait_for(
        lambda: letter("inventory", event_id), 30, what="the forgery in the inventory DLQ"
    )
    shp = wait_for(
        lambda: letter("shipment", reserved_headers["id"]),
        30,
        what="the forgery in the shipment DLQ",
    )
    for dead in (inv, shp):
        assert dead.reason.startswith("poison: unauthorized: a message with no verified sender"), (
            dead.reason
        )
        assert dead.headers["x-choreo-sender"] == "-"

    # The operator replays it: the broker moves it back as it was, and it is still believed by
    # nobody.
    run = rp.execute(settings, "inventory", [event_id], by="test")
    assert [r.outcome for r in run.records] == ["replayed"]
    wait_for(
        lambda: (
            (v := letter("inventory", event_id))
            and v.attempts == 1
            and v.reason.startswith("poison")
        ),
        30,
        what="the replayed forgery dead-lettered again",
    )
    queues_idle(settings)

    assert _effects(settings, order_id) == {
        "Reservation": 0,
        "Shipment": 0,
        "Charge": 0,
        "OrderView": 0,
        "Notification": 0,
        "Inbox": 0,
    }
    assert _stock(settings) == stock
    # The audit's unknown-order checks (a reservation or shipment for an order never placed) are
    # clean of it.
    checks = run_audit(settings)
    assert not [
        c.name
        for c in checks
        if order_id in c.offenders or any(order_id in p for p in c.problems.values())
    ]


def test_every_process_connects_as_its_own_user(settings, stack):
    from choreo.messaging.access import user_name
    from choreo.ops.stack import process_names

    for name in process_names(settings):
        if not name.startswith("worker-"):
            continue
        log = stack.logfile(name).read_text()
        assert f"amqp://{user_name(settings, name.removeprefix('worker-'))}:**@" in log, name
        assert "guest" not in log, name


def _secret_values(settings) -> dict[str, str]:
    folder = settings.run_dir / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    out = {}
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        out[f.name] = f.read_text().strip()
    return out


def test_no_secret_shows_in_logs_status_or_the_repo(settings, stack):
    from click.testing import CliRunner

    from choreo.cli import cli

    found = _secret_values(settings)
    assert {f"broker-password-{s}" for s in ("order", "payment", "operator", "flower")} <= set(
        found
    )
    assert any(name.startswith("users-token-") for name in found)
    runner = CliRunner()
    outputs = {
        args: runner.invoke(cli, list(args))
        for args in (("status", "--json"), ("status",), ("broker", "users"))
    }
    for args, result in outputs.items():
        assert result.exit_code == 0, (args, result.output)
    json.loads(outputs[("status", "--json")].output)
    texts = {f"choreo {' '.join(a)}": r.output for a, r in outputs.items()}
    for folder in (
        settings.run_dir / "logs",
        settings.run_dir / "traces",
        settings.run_dir.parent / "logs",
    ):
        if folder.exists():
            texts.update(
                {str(p): p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()}
            )
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        path = REPO / rel
        if path.is_file() and path.stat().st_size < 5_000_000:
            texts[rel] = path.read_text(errors="replace")
    assert len(texts) > 50
    leaks = [
        (name, where)
        for name, value in found.items()
        for where, text in texts.items()
        if value in text
    ]
    assert leaks == []
