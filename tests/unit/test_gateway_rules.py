"""The sandbox gateway's rules: what each test card makes the provider answer (no I/O)."""

from __future__ import annotations

import pytest

from choreo.world import gateway
from choreo.world.gateway import flaky_failures
from consumers.payment.rules import Declined, TransientError


def test_a_good_card_charges_on_the_first_attempt():
    assert gateway.sandbox_charge_rule("tok_visa", 0) is None


def test_the_declined_card_raises_declined_with_code_and_reason():
    with pytest.raises(Declined) as info:
        gateway.sandbox_charge_rule("tok_declined", 0)
    assert info.value.code == "card_declined"
    assert info.value.reason == "payment_declined"


def test_the_declined_card_is_declined_on_every_attempt_not_retried():
    for attempt in range(5):
        with pytest.raises(Declined):
            gateway.sandbox_charge_rule("tok_declined", attempt)


@pytest.mark.parametrize("attempts_before", [0, 1])
def test_flaky_2_fails_transiently_on_its_first_two_attempts(attempts_before):
    with pytest.raises(TransientError, match="tok_flaky_2"):
        gateway.sandbox_charge_rule("tok_flaky_2", attempts_before)


@pytest.mark.parametrize("attempts_before", [2, 3, 10])
def test_flaky_2_charges_from_the_third_attempt_on(attempts_before):
    assert gateway.sandbox_charge_rule("tok_flaky_2", attempts_before) is None


def test_the_refund_fails_card_charges_normally():
    assert gateway.sandbox_charge_rule("tok_refund_fails", 0) is None


def test_the_refund_fails_card_fails_every_refund_transiently():
    with pytest.raises(TransientError, match="refund"):
        gateway.sandbox_refund_rule("tok_refund_fails")


@pytest.mark.parametrize("card", ["tok_visa", "tok_flaky_2", "tok_declined"])
def test_other_cards_refund_fine(card):
    assert gateway.sandbox_refund_rule(card) is None


@pytest.mark.parametrize(
    ("card", "failures"),
    [("tok_flaky_2", 2), ("tok_flaky_7", 7), ("tok_visa", 0), ("tok_flaky_x", 0)],
)
def test_a_flaky_card_names_how_often_it_fails(card, failures):
    assert flaky_failures(card) == failures
