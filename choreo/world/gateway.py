"""The sandbox payment gateway: an 'external' provider with its own books and idempotency keys.

It commits on its own (like a remote API), so a worker killed after the charge but before
its own commit charges nothing twice on redelivery: the same key returns the same charge.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from choreo.infra.db import Rows
from config.catalog import CARD_DECLINED, CARD_FLAKY_PREFIX, CARD_REFUND_FAILS
from consumers.payment.rules import Declined, TransientError
from models.tables import GatewayAttempt, GatewayLedger, table_of

# --- the sandbox's rules: what the test cards make the provider answer ---------------------


def flaky_failures(card_token: str) -> int:
    """How many times the sandbox gateway fails this card before it succeeds."""
    match = re.fullmatch(rf"{CARD_FLAKY_PREFIX}(\d+)", card_token)
    return int(match.group(1)) if match else 0


def sandbox_charge_rule(card_token: str, attempts_before: int) -> None:
    """Raise what the sandbox gateway would for this card on this attempt; return if it charges."""
    if card_token == CARD_DECLINED:
        raise Declined("card_declined")
    if attempts_before < flaky_failures(card_token):
        raise TransientError(
            f"gateway timeout (sandbox: {card_token} fails {flaky_failures(card_token)}x)"
        )


def sandbox_refund_rule(card_token: str) -> None:
    if card_token == CARD_REFUND_FAILS:
        raise TransientError(
            "gateway refused refund: processor unavailable (sandbox: refunds always fail)"
        )


# --- the provider's books -------------------------------------------------------------------

LEDGER, ATTEMPTS = Rows(GatewayLedger), Rows(GatewayAttempt)
_ATT = table_of(GatewayAttempt)
_BUMP = (
    update(_ATT)
    .where(_ATT.c.idempotency_key == bindparam("k"))
    .values(attempts=_ATT.c.attempts + 1)
)


def _count_attempt(conn, key: str) -> int:
    """Count this call for `key`; returns how many came before it."""
    tries = ATTEMPTS.get(conn, key)
    if tries is None:
        ATTEMPTS.add(conn, idempotency_key=key, attempts=1)
        return 0
    conn.execute(_BUMP, {"k": key})
    return tries.attempts


def _refusal(rule, attempts_before: int) -> Exception | None:
    """What the sandbox's rule raises for this attempt (declined, unavailable), or None."""
    try:
        rule(attempts_before)
    except Exception as exc:
        return exc
    return None


class SandboxGateway:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _call(self, key: str, kind: str, order_id: str, amount: int, rule) -> str:
        """One provider call in one transaction: a known key replays its result; otherwise the
        attempt is counted (kept even when the rule refuses, as the provider's logs would be),
        the rule decides, and the money moves."""
        for _ in range(
            2
        ):  # a concurrent call with the same key may win the insert: read its result
            try:
                with self.engine.begin() as conn:
                    done = LEDGER.get(conn, key)
                    if done is not None:
                        return done.reference
                    refused = _refusal(rule, _count_attempt(conn, key))
                    if refused is None:
                        ref = f"{kind[:2]}_{uuid.uuid4().hex[:16]}"
                        LEDGER.add(
                            conn,
                            idempotency_key=key,
                            kind=kind,
                            order_id=order_id,
                            amount_cents=amount,
                            reference=ref,
                        )
            except IntegrityError:
                continue
            if refused is not None:  # raised after the commit, so the attempt stays counted
                raise refused
            return ref
        raise RuntimeError(f"gateway: key {key} kept conflicting")

    def charge(self, order_id: str, amount_cents: int, card_token: str) -> str:
        return self._call(
            f"charge:{order_id}",
            "charge",
            order_id,
            amount_cents,
            lambda before: sandbox_charge_rule(card_token, before),
        )

    def refund(self, order_id: str, amount_cents: int, card_token: str) -> str:
        return self._call(
            f"refund:{order_id}",
            "refund",
            order_id,
            amount_cents,
            lambda before: sandbox_refund_rule(card_token),
        )

    def totals(self) -> dict[str, dict[str, int]]:
        """Money moved per order: {order_id: {"charge": cents, "refund": cents, "charges": n,
        "refunds": n}}."""
        out: dict[str, dict[str, int]] = {}
        with Session(self.engine) as s:
            for order_id, kind, n, total in s.exec(
                select(
                    GatewayLedger.order_id,
                    GatewayLedger.kind,
                    func.count(),
                    func.sum(GatewayLedger.amount_cents),
                ).group_by(GatewayLedger.order_id, GatewayLedger.kind)
            ):
                d = out.setdefault(order_id, {"charge": 0, "refund": 0, "charges": 0, "refunds": 0})
                d[kind] = total
                d[kind + "s"] = n
        return out
