"""`choreo place` without a broker: a bad file places nothing, a publish failing half-way still
says which orders were placed, and stdout holds the ids (or the JSON document) alone."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from choreo.cli import orders as cli_orders
from consumers.order.messages import PlaceOrder

ORDER = {
    "customer_id": "cust-7",
    "items": [{"sku": "SKU-RED", "qty": 1}],
    "card_token": "tok_visa",
    "address": "1 Main Street",
}


class FakePublishing:
    """Stands in for the broker's confirms: records what would be placed; may fail after N."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.placed: list[str] = []

    def __call__(self, settings, orders, on_sent=None, source="cli"):
        for order_id, payload in orders:
            if self.fail_after is not None and len(self.placed) == self.fail_after:
                raise ConnectionError("the broker went away")
            assert isinstance(payload, PlaceOrder) and order_id  # checked, and named, first
            self.placed.append(order_id)
            on_sent()
        return list(self.placed)


@pytest.fixture
def publishing(monkeypatch):
    fake = FakePublishing()
    monkeypatch.setattr(cli_orders, "place_orders", fake)
    return fake


def run(lines: list[str], *args: str):
    return CliRunner().invoke(cli_orders.place, ["-", *args], input="\n".join(lines) + "\n")


def test_ids_alone_on_stdout_one_per_line(publishing):
    out = run([json.dumps({**ORDER, "order_id": "mine-1"}), json.dumps(ORDER)])
    assert out.exit_code == 0, out.stderr
    ids = out.stdout.splitlines()
    assert ids[0] == "mine-1" and ids[1].startswith("ord-") and len(ids) == 2
    assert publishing.placed == ids
    assert "publishing" in out.stderr  # the progress bar, on stderr


def test_json_is_one_document_alone_on_stdout(publishing):
    out = run([json.dumps({**ORDER, "order_id": "mine-1"})], "--json")
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout) == {"orders": [{"order_id": "mine-1"}]}


def test_a_bad_line_places_nothing_and_says_which(publishing):
    out = run([json.dumps(ORDER), json.dumps({**ORDER, "address": ""}), "{"], "--json")
    assert out.exit_code == 2 and out.stdout == ""
    assert "line 2: address: String should have at least 1 character" in out.stderr
    assert "line 3: not JSON" in out.stderr
    assert "2 bad line(s) in <stdin>: nothing was placed" in out.stderr
    assert publishing.placed == []


def test_an_empty_file_is_an_error(publishing):
    out = run(["", "  "])
    assert out.exit_code == 2 and "no orders in <stdin>" in out.stderr


def test_a_publish_failing_half_way_prints_what_was_placed(monkeypatch):
    fake = FakePublishing(fail_after=2)
    monkeypatch.setattr(cli_orders, "place_orders", fake)
    lines = [json.dumps({**ORDER, "order_id": f"o-{n}"}) for n in range(3)]
    out = run(lines, "--json")
    assert out.exit_code == 2
    assert json.loads(out.stdout) == {"orders": [{"order_id": "o-0"}, {"order_id": "o-1"}]}
    assert (
        "publishing stopped after 2 of 3 orders (placed: above): "
        "ConnectionError: the broker went away" in out.stderr
    )
