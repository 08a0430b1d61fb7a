"""Scenario test data: every scenario's order data leads to its intended outcome."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from choreo.ops.scenarios import (
    DEFAULT_MIX,
    SCENARIO_HELP,
    SCENARIOS,
    draw_scenarios,
    expected_outcome,
    make_order,
    parse_mix,
)
from choreo.world.gateway import flaky_failures
from config import catalog

INTENDED = {
    "completed": ("COMPLETED", None),
    "flaky": ("COMPLETED", None),
    "declined": ("CANCELLED", "payment_declined"),
    "out_of_stock": ("CANCELLED", "out_of_stock"),
    "undeliverable": ("CANCELLED", "shipment_failed"),
    "needs_attention": ("NEEDS_ATTENTION", "compensation_failed"),
    "price_mismatch": ("CANCELLED", "price_mismatch"),
    "unknown_sku": ("CANCELLED", "unknown_sku"),
}
REFUSED = ("price_mismatch", "unknown_sku")  # their data is wrong on purpose


def test_every_scenario_has_an_intended_outcome_and_a_default_weight():
    assert set(INTENDED) == set(SCENARIOS) == set(DEFAULT_MIX) == set(SCENARIO_HELP)


def test_the_documented_paths_are_the_scenarios():
    """Each row of the manual's paths table (docs/concepts/domains.md) ends in a (state, reason)
    that one scenario reaches, and every scenario's outcome is a row: `--mix all` is every path."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs/concepts/domains.md").read_text()
    table = page.split("## Paths, chosen by the order's data")[1].split("\n\n")[2]
    rows = [r for r in table.splitlines()[2:] if r.startswith("|")]
    documented = set()
    for row in rows:
        ends = row.split("|")[3]
        state = re.search(r"(COMPLETED|CANCELLED|NEEDS_ATTENTION)", ends).group(1)
        reason = re.search(r"\(([a-z_]+)\)", ends)
        documented.add((state, reason.group(1) if reason else None))
    assert documented == set(INTENDED.values())
    assert len(rows) == len(SCENARIOS) == 8


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_make_order_data_leads_to_the_intended_outcome(scenario):
    for seed in range(25):
        spec = make_order(scenario, random.Random(seed))
        assert spec.scenario == scenario
        assert expected_outcome(spec.card_token, spec.items, spec.address) == INTENDED[scenario], (
            seed
        )


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in REFUSED])
def test_make_order_gives_valid_items_and_a_known_customer(scenario):
    spec = make_order(scenario, random.Random(1))
    assert spec.customer_id in catalog.CUSTOMERS
    assert spec.items
    for item in spec.items:
        assert item["unit_price_cents"] == catalog.PRICES_CENTS[item["sku"]]
        assert 1 <= item["qty"] <= 3


def test_the_refused_scenarios_break_one_rule_each_and_pass_the_wire_format():
    from consumers.order.messages import PlaceOrder

    mismatch = make_order("price_mismatch", random.Random(2))
    (line,) = mismatch.items
    assert line["unit_price_cents"] != catalog.PRICES_CENTS[line["sku"]]
    unknown = make_order("unknown_sku", random.Random(2))
    assert [i["sku"] in catalog.PRICES_CENTS for i in unknown.items] == [True, False]
    for spec in (mismatch, unknown):
        assert spec.card_token == catalog.CARD_OK and spec.customer_id in catalog.CUSTOMERS
        PlaceOrder.model_validate(spec.payload().model_dump())


def test_make_order_is_deterministic_for_a_seeded_rng():
    assert make_order("completed", random.Random(7)) == make_order("completed", random.Random(7))


def test_make_order_works_without_an_rng():
    assert make_order("declined").card_token == catalog.CARD_DECLINED


def test_make_order_rejects_an_unknown_scenario():
    with pytest.raises(ValueError, match="unknown scenario 'lost'"):
        make_order("lost")


def test_flaky_card_fails_twice_then_succeeds():
    assert make_order("flaky", random.Random(0)).card_token == "tok_flaky_2"
    assert flaky_failures("tok_flaky_2") == 2
    assert flaky_failures("tok_visa") == 0
    assert flaky_failures("tok_flaky_x") == 0


def test_undeliverable_address_with_refund_failing_card_needs_attention():
    items = [{"sku": "SKU-RED", "qty": 1, "unit_price_cents": 1299}]
    assert expected_outcome(catalog.CARD_REFUND_FAILS, items, catalog.ADDRESS_UNDELIVERABLE) == (
        "NEEDS_ATTENTION",
        "compensation_failed",
    )


def test_declined_card_wins_over_stock_and_address_problems():
    items = [{"sku": catalog.SKU_SOLD_OUT, "qty": 1, "unit_price_cents": 4999}]
    assert expected_outcome(catalog.CARD_DECLINED, items, catalog.ADDRESS_UNDELIVERABLE) == (
        "CANCELLED",
        "payment_declined",
    )


# --- parse_mix -------------------------------------------------------------------------------


def test_parse_mix_without_text_is_the_default_mix():
    assert parse_mix(None) == DEFAULT_MIX
    assert parse_mix("") == DEFAULT_MIX
    assert parse_mix(None) is not DEFAULT_MIX  # a copy: callers may change it


def test_parse_mix_all_weighs_every_scenario_equally():
    assert parse_mix("all") == {s: 1 for s in SCENARIOS}


def test_parse_mix_reads_weights():
    assert parse_mix("completed=60, declined=40") == {"completed": 60, "declined": 40}


def test_parse_mix_scenario_without_weight_counts_once():
    assert parse_mix("flaky,completed=3") == {"flaky": 1, "completed": 3}


def test_parse_mix_rejects_an_unknown_scenario():
    with pytest.raises(
        ValueError, match=r"unknown scenario 'teleported' in --mix; choose from completed, "
    ):
        parse_mix("completed=1,teleported=2")


@pytest.mark.parametrize("weight", ["x", "1.5", ""])
def test_parse_mix_rejects_a_non_integer_weight(weight):
    with pytest.raises(
        ValueError, match=rf"weight for 'declined' must be a whole number, got '{weight}'"
    ):
        parse_mix(f"declined={weight}")


def test_parse_mix_rejects_a_negative_weight():
    with pytest.raises(ValueError, match="must not be negative"):
        parse_mix("declined=-1")


def test_parse_mix_rejects_all_zero_weights():
    with pytest.raises(ValueError, match="at least one scenario with a positive weight"):
        parse_mix("completed=0,declined=0")


# --- draw_scenarios -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 7, 99, 200, 1001])
def test_draw_scenarios_gives_exactly_count_items(count):
    assert len(draw_scenarios(count, DEFAULT_MIX, seed=1)) == count


def test_draw_scenarios_follows_the_default_weights_exactly_for_200():
    counts = Counter(draw_scenarios(200, DEFAULT_MIX, seed=3))
    assert counts == {name: 2 * weight for name, weight in DEFAULT_MIX.items()}


def test_draw_scenarios_gives_the_leftovers_to_the_largest_remainders():
    # 7 * weights / 100: completed 3.5, declined 1.05, out_of_stock 0.98, undeliverable 0.7,
    # flaky 0.63, needs_attention 0.14 -> floors sum to 4; the 3 largest remainders get one more.
    counts = Counter(draw_scenarios(7, DEFAULT_MIX, seed=0))
    assert counts == {
        "completed": 3,
        "declined": 1,
        "out_of_stock": 1,
        "undeliverable": 1,
        "flaky": 1,
    }


def test_draw_scenarios_never_draws_a_zero_weight_scenario():
    mix = {"completed": 1, "declined": 0, "flaky": 1}
    assert set(draw_scenarios(50, mix, seed=0)) == {"completed", "flaky"}


def test_draw_scenarios_is_deterministic_for_a_seed():
    assert draw_scenarios(200, DEFAULT_MIX, seed=42) == draw_scenarios(200, DEFAULT_MIX, seed=42)


def test_draw_scenarios_shuffles_differently_for_another_seed():
    a = draw_scenarios(200, DEFAULT_MIX, seed=1)
    b = draw_scenarios(200, DEFAULT_MIX, seed=2)
    assert a != b
    assert Counter(a) == Counter(b)


def test_the_seller_s_catalog_decides_before_any_test_card():
    assert expected_outcome(
        catalog.CARD_DECLINED, [{"sku": "SKU-NOPE", "qty": 1}], catalog.ADDRESS_OK
    ) == ("CANCELLED", "unknown_sku")
    assert expected_outcome(
        catalog.CARD_OK, [{"sku": "SKU-RED", "qty": 1, "unit_price_cents": 0}], catalog.ADDRESS_OK
    ) == ("CANCELLED", "price_mismatch")
    assert expected_outcome(
        catalog.CARD_OK, [{"sku": "SKU-RED", "qty": 1}], catalog.ADDRESS_OK
    ) == ("COMPLETED", None)


def test_scenario_of_reads_back_every_scenario_from_the_orders_data():
    import random

    from choreo.ops.scenarios import SCENARIOS, make_order, scenario_of

    rng = random.Random(5)
    for scenario in SCENARIOS:
        for _ in range(20):
            spec = make_order(scenario, rng)
            assert scenario_of(spec.card_token, spec.items, spec.address) == scenario
    assert scenario_of("tok_someone_elses", [{"sku": "SKU-NOPE", "qty": 1}], "x") == "custom"
