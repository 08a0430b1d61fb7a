"""The JSON Schema files under schemas/ are the models' own, and they judge messages as decode()
does."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from models import contract
from models.envelope import PAYLOADS, PoisonMessage, decode, make_envelope
from tests.helpers import celery_message

PLACE = {
    "customer_id": "cust-1",
    "items": [{"sku": "SKU-RED", "qty": 2}],
    "card_token": "tok_visa",
    "address": "1 Main Street, Springfield",
}


def test_the_checked_in_schema_files_match_the_models():
    assert contract.stale() == [], "run: python -m models.contract"


def _validator(name: str) -> Draft202012Validator:
    docs = {p: json.loads((contract.SCHEMA_DIR / p).read_text()) for p in contract.documents()}
    registry = Registry().with_resources(
        (d["$id"], Resource.from_contents(d)) for d in docs.values()
    )
    return Draft202012Validator(docs[name], registry=registry, format_checker=FormatChecker())


def _wire(**payload) -> dict:
    env = make_envelope("place_order", "ord-1", PLACE, source="client").to_wire()
    env["payload"] = {**env["payload"], **payload}
    return env


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"items": [{"sku": "SKU-RED", "qty": 1, "unit_price_cents": 1299}]},
        {"address": "x" * 500},
        {"address": "x" * 501},
        {"address": ""},
        {"items": []},
        {"items": [{"sku": "SKU-RED", "qty": 1}] * 100},
        {"items": [{"sku": "SKU-RED", "qty": 1}] * 101},
        {"items": [{"sku": "SKU-RED", "qty": 0}]},
        {"items": [{"sku": "SKU-RED", "qty": 1001}]},
        {"items": [{"sku": "SKU-RED", "qty": 1, "unit_price_cents": -1}]},
        {"coupon": "FREE"},
        {"card_token": None},
    ],
)
def test_the_envelope_schema_agrees_with_decode(change):
    raw = _wire(**change)
    try:
        decode(raw)
        accepted = True
    except PoisonMessage:
        accepted = False
    assert _validator("envelope.json").is_valid(raw) == accepted


@pytest.mark.parametrize(
    "change",
    [
        {"type": "payment.exploded"},
        {"schema_version": 2},
        {"order_id": "o" * 65},
        {"traceparent": "00-xyz"},
        {"priority": 9},
    ],
)
def test_the_envelope_schema_refuses_what_decode_refuses(change):
    raw = {**_wire(), **change}
    with pytest.raises(PoisonMessage):
        decode(raw)
    assert not _validator("envelope.json").is_valid(raw)


def test_every_type_s_payload_is_checked_by_the_envelope_schema():
    validator = _validator("envelope.json")
    for type_ in PAYLOADS:
        env = make_envelope("place_order", "ord-1", PLACE, source="client").to_wire()
        env["type"] = type_
        env["payload"] = {"not": "this type's payload"}
        assert not validator.is_valid(env), type_


def test_the_body_and_headers_schemas_accept_a_real_message_and_refuse_a_crasher():
    body, headers = celery_message("place_order", [_wire()])
    assert _validator("body.json").is_valid(json.loads(body))
    assert _validator("headers.json").is_valid(headers)
    assert not _validator("body.json").is_valid([[_wire()], {}])
    assert not _validator("body.json").is_valid([[_wire()], {}, {"chain": [{"task": "x"}]}])
    assert not _validator("headers.json").is_valid({k: v for k, v in headers.items() if k != "id"})
    assert not _validator("headers.json").is_valid({**headers, "eta": "2030-01-01T00:00:00Z"})


def test_the_contract_command_checks_and_writes(tmp_path, capsys):
    assert contract.main(["contract", "--check"]) == 0
    assert contract.stale(tmp_path) == sorted(
        contract.documents()
    )  # nothing there yet: all missing
    contract.write(tmp_path)
    assert contract.stale(tmp_path) == []
    (tmp_path / "payloads" / "gone.json").write_text("{}")
    assert contract.stale(tmp_path) == ["payloads/gone.json"]
    assert contract.main(["contract", "--bogus"]) == 2
    assert "usage" in capsys.readouterr().err
