"""The messages the inventory service sends: one class each, declaring its routing key and owner."""

from __future__ import annotations

from pydantic import Field

from models.envelope import MAX_ITEMS, Id, Item, Message, OrderSnapshot, Reason, Sku


class InventoryReserved(Message, key="inventory.reserved", owner="inventory"):
    reservation_id: Id
    order: OrderSnapshot


class InventoryFailed(Message, key="inventory.failed", owner="inventory"):
    reason: Reason
    skus: list[Sku] = Field(max_length=MAX_ITEMS)


class InventoryReleased(Message, key="inventory.released", owner="inventory"):
    reservation_id: Id | None
    items: list[Item] = Field(max_length=MAX_ITEMS)
