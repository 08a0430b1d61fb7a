"""Which domain hears which message types, per saga mode: the single source the topology is derived from."""

from __future__ import annotations

from choreo.messaging.topology import Topology
from config.settings import Settings
from consumers import inventory, notification, orchestrator, order, payment, shipment
from consumers.base import Subscription

CHOREOGRAPHY: dict[str, dict[str, Subscription]] = {
    "order": order.SUBSCRIPTIONS,
    "payment": payment.SUBSCRIPTIONS,
    "inventory": inventory.SUBSCRIPTIONS,
    "shipment": shipment.SUBSCRIPTIONS,
    "notification": notification.SUBSCRIPTIONS,
}

# Same handlers, other triggers: the orchestrator's commands instead of each other's events.
ORCHESTRATED: dict[str, dict[str, Subscription]] = {
    "order": order.SUBSCRIPTIONS,
    "payment": {
        "charge_payment": Subscription(payment.on_order_placed),
        "refund_payment": Subscription(payment.on_failure_refund, compensation=True),
    },
    "inventory": {
        "reserve_stock": Subscription(inventory.on_payment_completed),
        "release_stock": Subscription(inventory.on_shipment_failed, compensation=True),
    },
    "shipment": {"create_shipment": Subscription(shipment.on_inventory_reserved)},
    "notification": notification.SUBSCRIPTIONS,
    "orchestrator": orchestrator.SUBSCRIPTIONS,
}

MODES = {"choreography": CHOREOGRAPHY, "orchestrated": ORCHESTRATED}


def subscriptions(mode: str) -> dict[str, dict[str, Subscription]]:
    return MODES[mode]


def topology(settings: Settings) -> Topology:
    """The broker topology these tables give: each domain's queue bound to the types it hears."""
    return Topology(
        settings,
        {mode: {d: sorted(subs) for d, subs in table.items()} for mode, table in MODES.items()},
    )
