"""The manual's plain-pika client (docs/client.md, once the README's), run exactly as written as
the client's user: it places an order of every documented path and hears that order's outcome
on a queue of its own, NEEDS_ATTENTION included."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session

from tests.helpers import settled

pytestmark = pytest.mark.e2e
CLIENT_DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"

# Every path of the README's flow table, asked for by the order's data as docs/client.md's "Test
# data" says: path -> (what the client is given, what it must print after the order id: the
# outcome event heard and its reason).
PATHS = {
    "completed": ({}, "completed"),
    "declined": ({"CARD_TOKEN": "tok_declined"}, "cancelled payment_declined"),
    "out_of_stock": ({"SKU": "SKU-SOLDOUT"}, "cancelled out_of_stock"),
    "undeliverable": ({"ADDRESS": "1 UNDELIVERABLE Road"}, "cancelled shipment_failed"),
    "flaky": ({"CARD_TOKEN": "tok_flaky_2"}, "completed"),  # retried, then charged
    "needs_attention": (
        {"CARD_TOKEN": "tok_refund_fails", "SKU": "SKU-SOLDOUT"},
        "needs_attention compensation_failed",
    ),
    "price_mismatch": ({"GREEN_PRICE_CENTS": "1"}, "cancelled price_mismatch"),
    "unknown_sku": ({"SKU": "SKU-NOPE"}, "cancelled unknown_sku"),
}


def readme_client() -> str:
    text = CLIENT_DOC.read_text()
    block = re.search(
        r"<!-- client-example:start -->\s*```python\n(.*?)```\s*<!-- client-example:end -->",
        text,
        re.S,
    )
    assert block, "docs/client.md lost its client example"
    return block.group(1)


def state_of(heard: str) -> tuple[str, str | None]:
    """The order's state and reason an outcome says ("cancelled out_of_stock")."""
    outcome, _, reason = heard.partition(" ")
    return outcome.upper(), reason or None


@pytest.fixture(scope="module", params=["client", "operator"])
def heard(request, settings, stack, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Run the client once per path, all at once (each hears every order's outcomes and keeps
    its own), as the client's user and as the operator's, which docs/client.md both offer:
    path -> (order id, what it printed after the id)."""
    from choreo.messaging.access import service_url

    script = tmp_path_factory.mktemp("client") / "client.py"
    script.write_text(readme_client())
    # Only the broker's address and the order's data come from us; no choreo module is
    # importable from there (-I).
    base = {"PATH": os.environ["PATH"], "AMQP_URL": service_url(settings, request.param)}
    runs = {
        path: subprocess.Popen(
            [sys.executable, "-I", str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**base, **data},
            cwd=script.parent,
        )
        for path, (data, _) in PATHS.items()
    }
    out = {}
    for path, run in runs.items():
        stdout, stderr = run.communicate(timeout=180)
        assert run.returncode == 0, f"{path}: {stderr}"
        order_id, _, said = stdout.strip().partition(" ")
        out[path] = (order_id, said.strip())
    return out


@pytest.mark.parametrize("path", list(PATHS))
def test_the_readme_client_hears_its_order_s_outcome(settings, heard, path):
    order_id, said = heard[path]
    assert said == PATHS[path][1]
    # What it heard is what the order service holds.
    assert settled(settings, [order_id])[order_id] == state_of(said)


def test_the_readme_client_s_order_is_charged_at_catalog_prices(settings, heard):
    from choreo.infra.db import engine_for
    from consumers.payment.tables import Charge

    order_id, _ = heard["completed"]
    with Session(engine_for(settings, "payment")) as s:
        assert s.get(Charge, order_id).amount_cents == 2 * 1299 + 799
