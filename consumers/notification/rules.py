"""What a notification says, with no I/O."""

from __future__ import annotations

KINDS = {
    "order.completed": "completed",
    "order.cancelled": "cancelled",
    "order.needs_attention": "attention",
}


def compose(kind: str, order_id: str, name: str | None, payload: dict) -> str:
    who = name or "customer"
    if kind == "completed":
        euros = payload["amount_cents"] / 100
        return f"Hello {who}, your order {order_id} is on its way ({euros:.2f} EUR)."
    if kind == "attention":
        return (
            f"Hello {who}, something went wrong with your order {order_id}. "
            "Our staff is looking into it and will get back to you."
        )
    return (
        f"Hello {who}, your order {order_id} was cancelled ({payload['reason']}). "
        "You have not been charged for it."
    )
