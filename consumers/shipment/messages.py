"""The messages the shipment service sends: one class each, declaring its routing key and owner."""

from __future__ import annotations

from models.envelope import Id, Message, Reason


class ShipmentCreated(Message, key="shipment.created", owner="shipment"):
    shipment_id: Id
    tracking_code: Id


class ShipmentFailed(Message, key="shipment.failed", owner="shipment"):
    reason: Reason


class ShipmentCancelled(Message, key="shipment.cancelled", owner="shipment"):
    """A compensation: the order's shipment was withdrawn (None: none had been made, and none
    will be: a late request to ship it is refused)."""

    shipment_id: Id | None
    reason: Reason
