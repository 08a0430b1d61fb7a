"""Payment decisions with no I/O, and the two ways a charge can fail."""

from __future__ import annotations


class TransientError(Exception):
    """A failure worth retrying later (a gateway timeout, a 503)."""


class Declined(Exception):
    def __init__(self, code: str, reason: str = "payment_declined") -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason


def refund_amount(charged_cents: int | None) -> int:
    """Refund exactly what was charged, once; nothing when nothing was charged."""
    return charged_cents or 0
