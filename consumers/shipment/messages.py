"""The messages the shipment service sends: one class each, declaring its routing key and owner."""

from __future__ import annotations

from models.envelope import Id, Message, Reason


class ShipmentCreated(Message, key="shipment.created", owner="shipment"):
    shipment_id: Id
    tracking_code: Id


class ShipmentFailed(Message, key="shipment.failed", owner="shipment"):
    reason: Reason
