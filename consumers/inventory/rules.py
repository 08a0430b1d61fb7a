"""Stock decisions with no I/O."""

from __future__ import annotations


def missing_skus(available: dict[str, int], items: list[dict]) -> list[str]:
    """SKUs of `items` that the stock levels cannot cover (quantities of a SKU add up)."""
    wanted: dict[str, int] = {}
    for item in items:
        wanted[item["sku"]] = wanted.get(item["sku"], 0) + item["qty"]
    return sorted(sku for sku, qty in wanted.items() if available.get(sku, 0) < qty)


def merged(items: list[dict]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for item in items:
        totals[item["sku"]] = totals.get(item["sku"], 0) + item["qty"]
    return totals
