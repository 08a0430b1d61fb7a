"""What the worker reads off a delivery before the adapter sees it (tasks.worker._delivery): the
sender the broker vouches for, and a replayed dead letter starting again at attempt 0. A fake
message here: the real ones are in tests/e2e (test_least_privilege, test_dlq_replay)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from config.settings import Settings
from tasks.worker import _delivery, replayed


@dataclass
class FakeMessage:
    headers: dict
    properties: dict = field(default_factory=dict)
    delivery_info: dict = field(default_factory=dict)

    def decode(self):
        return [{"order_id": "ord-1"}], {}, {}


SETTINGS = Settings(broker_user_prefix="t-")


def _message(user_id=None, **headers) -> FakeMessage:
    return FakeMessage(
        {"task": "payment.completed", "id": "ev-1", **headers},
        {"user_id": user_id} if user_id else {},
    )


@pytest.mark.parametrize(
    "user_id, headers, sender, claim",
    [
        ("t-payment", {}, "payment", None),  # the owner itself
        (
            "t-operator",
            {"x-choreo-sender": "payment"},
            "operator",
            None,
        ),  # another's header is nothing
        (
            "t-inventory",
            {"x-choreo-sender": "payment"},
            None,
            "payment",
        ),  # its own copy: a claim to prove
        ("t-inventory", {"x-choreo-sender": "-"}, None, None),  # a copy of an unverified one
        (None, {"x-choreo-sender": "payment"}, None, None),  # no user_id: nobody vouches
        ("payment", {}, None, None),  # not one of ours
    ],
)
def test_the_sender_is_the_one_the_broker_vouches_for(user_id, headers, sender, claim):
    d = _delivery(_message(user_id, **headers), SETTINGS, "inventory")
    assert (d.sender, d.claim) == (sender, claim)


def test_a_dead_letter_moved_back_by_a_replay_starts_at_attempt_zero():
    death = {"queue": "choreo.inventory.dlq", "reason": "rejected", "count": 1}
    rung = {"queue": "choreo.inventory.retry.2", "reason": "expired", "count": 1}
    again = _message(
        "t-inventory",
        **{"choreo_attempt": 2, "x-death": [death, rung], "x-choreo-sender": "payment"},
    )
    assert _delivery(again, SETTINGS, "inventory").attempt == 0
    # Back from its retry rung (the newest death is the rung's): it keeps climbing.
    climbing = _message(
        "t-inventory",
        **{"choreo_attempt": 2, "x-death": [rung, death], "x-choreo-sender": "payment"},
    )
    assert _delivery(climbing, SETTINGS, "inventory").attempt == 2
    assert not replayed({"x-death": [death]}, "choreo.payment.dlq")  # another domain's DLQ
    assert not replayed({"x-death": "garbage"}, "choreo.inventory.dlq") and not replayed(
        {}, "choreo.inventory.dlq"
    )
    assert replayed({"x-death": [{"queue": b"choreo.inventory.dlq"}]}, "choreo.inventory.dlq")
