"""Payment decisions and the sandbox gateway's rules (test cards), with no I/O."""
from __future__ import annotations

from config.catalog import CARD_DECLINED, CARD_REFUND_FAILS, flaky_failures


class TransientError(Exception):
    """A failure worth retrying later (a gateway timeout, a 503)."""


class Declined(Exception):
    def __init__(self, code: str, reason: str = "payment_declined") -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason


def sandbox_charge_rule(card_token: str, attempts_before: int) -> None:
    """Raise what the sandbox gateway would for this card on this attempt; return if it charges."""
    if card_token == CARD_DECLINED:
        raise Declined("card_declined")
    if attempts_before < flaky_failures(card_token):
        raise TransientError(f"gateway timeout (sandbox: {card_token} fails {flaky_failures(card_token)}x)")


def sandbox_refund_rule(card_token: str) -> None:
    if card_token == CARD_REFUND_FAILS:
        raise TransientError("gateway refused refund: processor unavailable (sandbox: refunds always fail)")


def refund_amount(charged_cents: int | None) -> int:
    """Refund exactly what was charged, once; nothing when nothing was charged."""
    return charged_cents or 0
