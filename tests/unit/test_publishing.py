"""What every published message carries for Flower, and which of a worker's publishes wait for
confirms."""

from __future__ import annotations

from types import SimpleNamespace

from choreo.messaging.publisher import Publisher
from choreo.messaging.topology import Names
from choreo.messaging.wire import flower_argsrepr
from config.settings import Settings
from consumers.order.messages import PlaceOrder
from models.envelope import make_envelope

ORDER = PlaceOrder(
    customer_id="cust-1",
    items=[{"sku": "SKU-RED", "qty": 1, "unit_price_cents": 100}],
    card_token="tok_visa",
    address="1 Main Street",
)


class FakeApp:
    """Records send_task calls instead of talking to a broker."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send_task(self, name, **options):
        self.sent.append({"name": name, **options})


def test_flower_sees_an_envelope_as_its_ids_and_anything_else_as_celery_would():
    env = {
        "order_id": "ord-1",
        "correlation_id": "ord-1",
        "event_id": "ev-1",
        "payload": {"big": "x" * 5000},
    }
    assert flower_argsrepr([env]) == "order=ord-1 correlation=ord-1 event=ev-1"
    assert flower_argsrepr(["not an envelope"]) is None  # poison: Celery's saferepr
    assert flower_argsrepr([env, env]) is None
    assert flower_argsrepr([]) is None


def test_each_envelope_sent_carries_its_ids_as_argsrepr_events_retries_and_dead_letters_alike():
    app = FakeApp()
    publisher = Publisher(app, Names("t"))
    env = make_envelope("place_order", "ord-9", ORDER, source="test")
    publisher.publish(env)  # an event
    publisher.send(
        "place_order", [env.to_wire()], {}, task_id=env.event_id, queue="t.order.retry.1"
    )  # a retry
    publisher.send(
        "place_order", ["garbage"], {}, task_id="x", exchange="t.dlx", routing_key="order"
    )  # poison
    want = f"order=ord-9 correlation={env.correlation_id} event={env.event_id}"
    assert [m.get("argsrepr") for m in app.sent] == [want, want, None]


def test_workers_send_task_events_and_nobody_sends_sent_events():
    # A sent event carries the message's id; Flower's record of a delivery is <id>@<domain>.
    from tasks.app import make_app

    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:1//")
    worker, client = make_app("order", settings), make_app("client", settings)
    assert worker.conf.worker_send_task_events is True
    assert worker.conf.task_send_sent_event is False
    assert client.conf.task_send_sent_event is False


def test_the_event_dispatchers_connection_skips_confirms_and_the_apps_other_connections_keep_them():
    from tasks.app import make_app
    from tasks.internals import ChoreoConsumer

    app = make_app("order", Settings(broker_url="amqp://guest:guest@127.0.0.1:1//"))
    consumer = SimpleNamespace(
        app=app, ensure_connected=lambda conn: conn
    )  # no broker: nothing connects
    events = ChoreoConsumer.connection_for_write(consumer)
    assert events.transport_options["confirm_publish"] is False
    assert app.connection_for_write().transport_options["confirm_publish"] is True


def test_two_domain_apps_in_one_process_keep_their_own_handlers():
    """Celery shares decorated tasks with every app finalized later unless told not to: the
    shipment app then ran the order service's handler for inventory.reserved."""
    from tasks.app import make_app

    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:1//")
    order, shipment = make_app("order", settings), make_app("shipment", settings)
    order.finalize()
    shipment.finalize()
    assert order.tasks["inventory.reserved"].run.__name__ == "order_inventory_reserved"
    assert shipment.tasks["inventory.reserved"].run.__name__ == "shipment_inventory_reserved"
    assert "place_order" not in shipment.tasks
