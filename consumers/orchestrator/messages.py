"""The orchestrated mode's commands, sent by the orchestrator: one class each, with its key."""

from __future__ import annotations

from models.envelope import ORCHESTRATOR, CardToken, Message, OrderSnapshot, Reason


class ChargePayment(Message, key="charge_payment", owner=ORCHESTRATOR):
    order: OrderSnapshot
    card_token: CardToken


class RefundPayment(Message, key="refund_payment", owner=ORCHESTRATOR):
    reason: Reason


class ReserveStock(Message, key="reserve_stock", owner=ORCHESTRATOR):
    order: OrderSnapshot


class ReleaseStock(Message, key="release_stock", owner=ORCHESTRATOR):
    reason: Reason


class CreateShipment(Message, key="create_shipment", owner=ORCHESTRATOR):
    order: OrderSnapshot


class CancelShipment(Message, key="cancel_shipment", owner=ORCHESTRATOR):
    reason: Reason
