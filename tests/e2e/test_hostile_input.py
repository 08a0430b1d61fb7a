"""No message may take a worker down: every delivery ends processed or in the DLQ with its reason.

Each case is sent raw (pika, as a client in any language would) straight to a real worker's
queue, with a canary behind it. Afterwards: the worker has the same pid, the message is in the
DLQ with a reason naming what was wrong, the canary was never redelivered (no other message's
delivery count moved), and a good order sent with them completed.
"""

from __future__ import annotations

import gzip
import json
import uuid

import pytest
from sqlmodel import Session, select

from tests.helpers import EMBED, Probe, celery_message, place_order, settled, wait_for, workers

pytestmark = pytest.mark.e2e


def _frame(*parts) -> bytes:
    return json.dumps(list(parts)).encode()


def crash_case(name: str, env: dict) -> tuple[bytes, dict, str | None, str | None, str]:
    """(body, headers, content_type, content_encoding, expected reason) for each known crasher."""
    good_body, h = celery_message("place_order", [env], env["event_id"])
    json_ct, utf8 = "application/json", "utf-8"
    no_id = {k: v for k, v in h.items() if k != "id"}
    cases = {
        # The bodies and the header set of the report, each of which killed the worker.
        "empty_list": (b"[]", h, json_ct, utf8, "body must be a JSON array of 3 elements"),
        "string": (
            b'"hello"',
            h,
            json_ct,
            utf8,
            "body must be a JSON array [args, kwargs, options], got a string",
        ),
        "null": (b"null", h, json_ct, utf8, "got null"),
        "number": (b"42", h, json_ct, utf8, "got a number"),
        "list_of_a_number": (
            b"[1]",
            h,
            json_ct,
            utf8,
            "array of 3 elements [args, kwargs, options], got 1",
        ),
        "empty_body": (b"", h, json_ct, utf8, "body is empty"),
        "list_of_1": (_frame([env]), h, json_ct, utf8, "got 1"),
        "list_of_2": (_frame([env], {}), h, json_ct, utf8, "got 2"),
        "list_of_4": (_frame([env], {}, EMBED, {}), h, json_ct, utf8, "got 4"),
        "object_of_1_key": (
            json.dumps({"args": [env]}).encode(),
            h,
            json_ct,
            utf8,
            "got an object",
        ),
        "object_of_3_keys": (
            json.dumps({"args": [env], "kwargs": {}, "embed": {}}).encode(),
            h,
            json_ct,
            utf8,
            "got an object",
        ),
        "task_without_id": (good_body, no_id, json_ct, utf8, "header 'id' must be a string"),
        # What else a client could set to make Celery act on its say-so.
        "eta": (
            good_body,
            {**h, "eta": "2099-01-01T00:00:00+00:00"},
            json_ct,
            utf8,
            "header 'eta' must be null",
        ),
        "expires": (
            good_body,
            {**h, "expires": "2000-01-01T00:00:00+00:00"},
            json_ct,
            utf8,
            "header 'expires'",
        ),
        "chained_task": (
            _frame([env], {}, {**EMBED, "chain": [{"task": "payment.completed", "args": []}]}),
            h,
            json_ct,
            utf8,
            "must be null: choreo messages carry no callbacks",
        ),
        "task_not_a_string": (
            good_body,
            {**h, "task": ["place_order"]},
            json_ct,
            utf8,
            "header 'task' must be",
        ),
        "attempt_not_a_number": (
            good_body,
            {**h, "choreo_attempt": "9"},
            json_ct,
            utf8,
            "header 'choreo_attempt'",
        ),
        "pickle": (
            good_body,
            h,
            "application/x-python-serialize",
            "binary",
            "content_type must be application/json",
        ),
        "no_content_type": (
            good_body,
            h,
            None,
            None,
            "content_type must be application/json, got None",
        ),
        "gzip_bomb": (
            gzip.compress(b"[" + b" " * 5_000_000 + b"]"),
            {**h, "compression": "application/x-gzip"},
            json_ct,
            utf8,
            "compressed bodies are not accepted",
        ),
        "megabyte_address": (
            celery_message(
                "place_order", [{**env, "payload": {**env["payload"], "address": "x" * 1_000_000}}]
            )[0],
            h,
            json_ct,
            utf8,
            "over the limit of 65536 bytes (max_message_bytes)",
        ),
    }
    return cases[name]


CRASH_CASES = [
    "empty_list",
    "string",
    "null",
    "number",
    "list_of_a_number",
    "empty_body",
    "list_of_1",
    "list_of_2",
    "list_of_4",
    "object_of_1_key",
    "object_of_3_keys",
    "task_without_id",
    "eta",
    "expires",
    "chained_task",
    "task_not_a_string",
    "attempt_not_a_number",
    "pickle",
    "no_content_type",
    "gzip_bomb",
    "megabyte_address",
]


@pytest.mark.parametrize("case", CRASH_CASES)
def test_a_message_that_crashed_celery_is_dead_lettered_and_the_worker_serves_on(
    settings, stack, case
):
    probe = Probe(settings)
    before = workers(stack)
    poisoned = poison_count(settings)
    body, headers, content_type, encoding, reason = crash_case(case, place_order())
    poison = probe.send(body, headers, content_type, encoding)
    # Behind it in the queue: a canary the guard refuses, and a good order.
    canary = probe.send(b"{}", {"task": "canary.never.subscribed", "id": str(uuid.uuid4())})
    good = place_order()
    good_body, good_headers = celery_message("place_order", [good], good["event_id"])
    probe.place(good_body, good_headers)

    letters = probe.wait_letters([poison, canary])
    assert reason in letters[poison].reason, letters[poison].reason
    assert letters[poison].reason.startswith("poison: ")
    assert letters[poison].attempts == 1  # no retries for poison
    for m in (poison, canary):  # dead-lettered on first delivery: no worker died holding them
        assert letters[m].headers["x-choreo-delivery-count"] == 0, letters[m].headers
        assert letters[m].headers["x-choreo-redelivered"] is False
    assert settled(settings, [good["order_id"]])[good["order_id"]] == ("COMPLETED", None)
    assert workers(stack) == before
    assert (
        poison_count(settings) - poisoned == 2
    )  # the poison and the canary, counted for `choreo status`


def poison_count(settings) -> int:
    from choreo.infra.metrics import Metrics
    from choreo.infra.redis_client import redis_client

    return (
        Metrics(redis_client(settings), settings.redis_prefix).snapshot()["poison"].get("order", 0)
    )


@pytest.mark.parametrize(
    "change, reason",
    [
        (
            {"address": "x" * 10_000},
            "schema: payload.address: String should have at most 500 characters",
        ),
        (
            {"items": [{"sku": "SKU-RED", "qty": 1}] * 101},
            "schema: payload.items: List should have at most 100 items",
        ),
        ({"items": [{"sku": "SKU-RED", "qty": 1}] * 10_000}, "over the limit of 65536 bytes"),
        (
            {"items": [{"sku": "SKU-RED", "qty": 10_000}]},
            "payload.items.0.qty: Input should be less than or equal to 1000",
        ),
    ],
)
def test_a_message_over_a_limit_is_refused_naming_the_limit(settings, stack, change, reason):
    probe = Probe(settings)
    env = place_order(**change)
    body, headers = celery_message("place_order", [env], env["event_id"])
    sent = probe.send(body, headers)
    letter = probe.wait_letters([sent])[sent]
    assert reason in letter.reason, letter.reason
    from choreo.app.queries import order_states

    assert order_states(settings, [env["order_id"]]) == {}  # no order was created


def _charges(settings, order_ids) -> dict:
    from choreo.infra.db import engine_for
    from consumers.payment.tables import Charge

    with Session(engine_for(settings, "payment")) as s:
        return {
            c.order_id: c.amount_cents
            for c in s.exec(select(Charge).where(Charge.order_id.in_(order_ids)))
        }


def test_the_seller_sets_the_price(settings, stack):
    """A client price of zero or of anything but the catalog's is refused; no price is the
    catalog's."""
    from choreo.ops.audit import Check, Snapshot, check_money
    from config.catalog import PRICES_CENTS

    probe = Probe(settings)
    orders = {
        "free": place_order(items=[{"sku": "SKU-RED", "qty": 3, "unit_price_cents": 0}]),
        "cheap": place_order(
            items=[{"sku": "SKU-RED", "qty": 1, "unit_price_cents": PRICES_CENTS["SKU-RED"] - 1}]
        ),
        "unknown": place_order(items=[{"sku": "SKU-GOLD", "qty": 1}]),
        "unpriced": place_order(
            items=[{"sku": "SKU-RED", "qty": 3}, {"sku": "SKU-BLUE", "qty": 1}]
        ),
        "priced_right": place_order(
            items=[{"sku": "SKU-GREEN", "qty": 2, "unit_price_cents": PRICES_CENTS["SKU-GREEN"]}]
        ),
    }
    for env in orders.values():
        probe.place(*celery_message("place_order", [env], env["event_id"]))
    ids = {name: env["order_id"] for name, env in orders.items()}
    states = settled(settings, list(ids.values()))
    assert states[ids["free"]] == ("CANCELLED", "price_mismatch")
    assert states[ids["cheap"]] == ("CANCELLED", "price_mismatch")
    assert states[ids["unknown"]] == ("CANCELLED", "unknown_sku")
    assert states[ids["unpriced"]] == ("COMPLETED", None)
    assert states[ids["priced_right"]] == ("COMPLETED", None)
    charges = _charges(settings, list(ids.values()))
    assert charges == {
        ids["unpriced"]: 3 * PRICES_CENTS["SKU-RED"] + PRICES_CENTS["SKU-BLUE"],
        ids["priced_right"]: 2 * PRICES_CENTS["SKU-GREEN"],
    }
    money = Check("money", "")
    check_money(Snapshot(settings), money)
    assert not set(money.problems) & set(ids.values()), money.problems


def test_an_unroutable_event_is_kept_in_unrouted_and_counted(settings, stack):
    from choreo.messaging.admin import BrokerAdmin
    from choreo.ops.status import gather_status

    env = place_order()
    body, headers = celery_message(
        "paymnet.completed", [env]
    )  # a typo'd type: nothing is bound to it
    message_id = f"unrouted-{uuid.uuid4().hex}"
    # Every service's topic permissions refuse a type it does not own, typo'd ones included; a
    # publisher with wider rights (the bootstrap user here) is what can still send one.
    with BrokerAdmin(settings, service=None) as admin:
        admin.publish_raw("paymnet.completed", body, headers, message_id=message_id, user_id=None)

    def kept():
        with BrokerAdmin(settings) as admin:
            return {
                d.message_id: d for d in admin.peek("unrouted", 500) if d.message_id == message_id
            }

    letter = wait_for(kept, 15, what="the unroutable event in unrouted")[message_id]
    assert letter.routing_key == "paymnet.completed"
    assert "nothing is bound to routing key 'paymnet.completed'" in letter.reason
    status = gather_status(settings)
    assert status["unrouted"] >= 1
