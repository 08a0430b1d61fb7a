"""The sandbox payment gateway: an 'external' provider with its own books and idempotency keys.

It commits on its own (like a remote API), so a worker killed after the charge but before
its own commit charges nothing twice on redelivery: the same key returns the same charge.
"""
from __future__ import annotations

import uuid

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from choreo.domain.payment import sandbox_charge_rule, sandbox_refund_rule
from models.tables import GatewayAttempt, GatewayLedger


class SandboxGateway:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _attempt(self, key: str) -> int:
        """Count this call (committed at once, as the provider's logs would be); return prior count."""
        with Session(self.engine) as s:
            row = s.get(GatewayAttempt, key) or GatewayAttempt(idempotency_key=key, attempts=0)
            before = row.attempts
            row.attempts = before + 1
            s.add(row)
            s.commit()
            return before

    def _book(self, key: str, kind: str, order_id: str, amount: int) -> str:
        with Session(self.engine) as s:
            existing = s.get(GatewayLedger, key)
            if existing:
                return existing.reference
            ref = f"{kind[:2]}_{uuid.uuid4().hex[:16]}"
            s.add(GatewayLedger(idempotency_key=key, kind=kind, order_id=order_id, amount_cents=amount, reference=ref))
            try:
                s.commit()
            except IntegrityError:  # a concurrent call with the same key won
                s.rollback()
                return s.get(GatewayLedger, key).reference
            return ref

    def _existing(self, key: str) -> str | None:
        with Session(self.engine) as s:
            row = s.get(GatewayLedger, key)
            return row.reference if row else None

    def charge(self, order_id: str, amount_cents: int, card_token: str) -> str:
        key = f"charge:{order_id}"
        done = self._existing(key)
        if done:
            return done
        sandbox_charge_rule(card_token, self._attempt(key))
        return self._book(key, "charge", order_id, amount_cents)

    def refund(self, order_id: str, amount_cents: int, card_token: str) -> str:
        key = f"refund:{order_id}"
        done = self._existing(key)
        if done:
            return done
        self._attempt(key)
        sandbox_refund_rule(card_token)
        return self._book(key, "refund", order_id, amount_cents)

    def totals(self) -> dict[str, dict[str, int]]:
        """Money moved per order: {order_id: {"charge": cents, "refund": cents, "charges": n, "refunds": n}}."""
        out: dict[str, dict[str, int]] = {}
        with Session(self.engine) as s:
            for order_id, kind, n, total in s.exec(
                    select(GatewayLedger.order_id, GatewayLedger.kind, func.count(), func.sum(GatewayLedger.amount_cents))
                    .group_by(GatewayLedger.order_id, GatewayLedger.kind)):
                d = out.setdefault(order_id, {"charge": 0, "refund": 0, "charges": 0, "refunds": 0})
                d[kind] = total
                d[kind + "s"] = n
        return out
