"""Shipment decisions with no I/O."""

from __future__ import annotations

import hashlib

# The carrier refuses an address marked so (the sandbox's stand-in for an address it cannot reach).
UNDELIVERABLE_MARK = "UNDELIVERABLE"


def is_undeliverable(address: str) -> bool:
    return UNDELIVERABLE_MARK in address.upper()


def ship(order_id: str, address: str) -> tuple[bool, str]:
    """(created?, tracking code or failure reason)."""
    if is_undeliverable(address):
        return False, "address_undeliverable"
    return True, "TRK-" + hashlib.sha1(order_id.encode()).hexdigest()[:12].upper()
