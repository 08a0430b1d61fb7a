"""Shipment decisions with no I/O."""
from __future__ import annotations

import hashlib

from config.catalog import is_undeliverable


def ship(order_id: str, address: str) -> tuple[bool, str]:
    """(created?, tracking code or failure reason)."""
    if is_undeliverable(address):
        return False, "address_undeliverable"
    return True, "TRK-" + hashlib.sha1(order_id.encode()).hexdigest()[:12].upper()
