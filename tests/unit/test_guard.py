"""The protocol guard: every shape that crashed Celery's own request handling is refused by name."""

from __future__ import annotations

import json

import pytest

from tasks.guard import Limits, Malformed, check

LIMITS = Limits(max_bytes=64 * 1024, max_attempts=3)
KNOWN = {"place_order", "payment.completed"}
ENVELOPE = {
    "event_id": "e-1",
    "type": "place_order",
}  # the guard checks the frame, not the envelope
GOOD_BODY = [[ENVELOPE], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def headers(**changes) -> dict:
    h = {
        "lang": "py",
        "task": "place_order",
        "id": "e-1",
        "root_id": "e-1",
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "test",
    }
    h.update(changes)
    return {k: v for k, v in h.items() if v is not ...}


DEFAULT = object()


def run(
    body=GOOD_BODY,
    hdrs=DEFAULT,
    content_type="application/json",
    content_encoding="utf-8",
    raw: bytes | None = None,
):
    data = raw if raw is not None else json.dumps(body).encode()
    return check(
        data,
        headers() if hdrs is DEFAULT else hdrs,
        content_type,
        content_encoding,
        lambda: json.loads(data),
        KNOWN,
        LIMITS,
    )


def test_a_well_formed_message_passes_with_celery_s_headers():
    clean = run()
    assert clean["task"] == "place_order" and clean["id"] == "e-1"
    assert clean["eta"] is None and clean["expires"] is None and clean["timelimit"] == [None, None]


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"[]", r"array of 3 elements .*, got 0"),
        (b'"hello"', "got a string"),
        (b"null", "got null"),
        (b"42", "got a number"),
        (b"[1]", r"array of 3 elements .*, got 1"),
        (b"", "body is empty"),
        (json.dumps([[ENVELOPE]]).encode(), r"array of 3 elements .*, got 1"),
        (json.dumps([[ENVELOPE], {}]).encode(), r"array of 3 elements .*, got 2"),
        (json.dumps([[ENVELOPE], {}, {}, {}]).encode(), r"array of 3 elements .*, got 4"),
        (b'{"args": [1]}', "got an object"),
        (b'{"a": 1, "b": 2, "c": 3}', "got an object"),
        (json.dumps([ENVELOPE, {}, {}]).encode(), r"body\[0\] \(args\) must be an array"),
        (json.dumps([[ENVELOPE], "x", {}]).encode(), r"body\[1\] \(kwargs\) must be an object"),
        (json.dumps([[ENVELOPE], {}, "x"]).encode(), r"body\[2\] \(options\) must be an object"),
        (
            json.dumps([[ENVELOPE, "extra"], {}, {}]).encode(),
            "expected exactly one positional argument",
        ),
        (
            json.dumps([[ENVELOPE], {"x": 1}, {}]).encode(),
            "expected exactly one positional argument",
        ),
        (json.dumps([["envelope"], {}, {}]).encode(), "envelope must be a JSON object"),
        (json.dumps([[ENVELOPE], {}, {"chain": [{"task": "x"}]}]).encode(), "must be null"),
        (json.dumps([[ENVELOPE], {}, {"reply": 1}]).encode(), "unknown keys"),
        (b"{this is not json", "not valid JSON"),
    ],
)
def test_bodies_that_crashed_celery_are_refused_with_what_is_wrong(raw, reason):
    with pytest.raises(Malformed, match=reason):
        run(raw=raw)


@pytest.mark.parametrize(
    "hdrs, reason",
    [
        ({"lang": "py", "task": "place_order"}, "header 'id' must be a string .* got missing"),
        (headers(id=""), "header 'id'"),
        (headers(id=7), "header 'id'"),
        (headers(id="x" * 500), "header 'id'"),
        ({}, "not a choreo message"),
        (None, "not a choreo message"),
        (headers(task=["place_order"]), "header 'task' must be a message type name"),
        (headers(task="payment.exploded"), "unknown message type 'payment.exploded'"),
        (headers(eta="2030-01-01T00:00:00Z"), "header 'eta' must be null"),
        (headers(expires="2000-01-01T00:00:00Z"), "header 'expires' must be null"),
        (headers(timelimit=[1, 2]), "header 'timelimit'"),
        (headers(retries="many"), "header 'retries' must be a whole number"),
        (headers(retries=-1), "header 'retries'"),
        (headers(choreo_attempt="2"), "header 'choreo_attempt' must be a whole number"),
        (headers(choreo_attempt=99), "over its limit of 3"),
        (headers(lang="js"), "header 'lang'"),
        (headers(root_id={"a": 1}), "header 'root_id' must be a string or null"),
        (headers(ignore_result="no"), "header 'ignore_result'"),
    ],
)
def test_header_sets_that_crashed_celery_are_refused_with_the_header_named(hdrs, reason):
    with pytest.raises(Malformed, match=reason):
        run(hdrs=hdrs)


def test_headers_celery_would_act_on_are_dropped_not_passed():
    clean = run(
        hdrs=headers(
            stamps={"x": 1},
            stamped_headers=["x"],
            reply_to="q",
            chain=[{"task": "x"}],
            **{"x-death": [{"count": 1}], "x-delivery-count": 2, "traceparent": "00-..."},
        )
    )
    assert not {"stamps", "stamped_headers", "reply_to", "chain", "traceparent"} & clean.keys()
    assert (
        clean["x-death"] == [{"count": 1}] and clean["x-delivery-count"] == 2
    )  # the broker's, kept


def test_choreo_headers_are_kept_typed():
    clean = run(hdrs=headers(choreo_attempt=2, choreo_last_error="boom", choreo_order_id="o-1"))
    assert (clean["choreo_attempt"], clean["choreo_last_error"], clean["choreo_order_id"]) == (
        2,
        "boom",
        "o-1",
    )


def test_a_body_over_the_size_limit_is_refused_naming_the_limit_before_it_is_decoded():
    def must_not_decode():
        raise AssertionError("decoded a body over the limit")

    big = b"[" + b" " * (LIMITS.max_bytes + 1) + b"]"
    with pytest.raises(
        Malformed, match=rf"{len(big)} bytes, over the limit of {LIMITS.max_bytes} bytes"
    ):
        check(big, headers(), "application/json", "utf-8", must_not_decode, KNOWN, LIMITS)


@pytest.mark.parametrize(
    "content_type, encoding, reason",
    [
        ("application/x-python-serialize", "binary", "content_type must be application/json"),
        (None, "utf-8", "content_type must be application/json, got None"),
        ("text/plain", "utf-8", "content_type"),
        ("application/json", "latin-1", "content_encoding must be utf-8"),
    ],
)
def test_only_utf8_json_is_read(content_type, encoding, reason):
    with pytest.raises(Malformed, match=reason):
        run(content_type=content_type, content_encoding=encoding)


def test_a_decoder_that_raises_anything_is_a_reason_not_a_crash():
    def explode():
        raise RecursionError("maximum recursion depth exceeded")

    with pytest.raises(Malformed, match="not valid JSON: maximum recursion"):
        check(b"[[[[", headers(), "application/json", "utf-8", explode, KNOWN, LIMITS)


def test_a_body_py_amqp_decoded_to_text_is_measured_in_bytes():
    # py-amqp hands over a str when the body decodes with its content_encoding: 'é' is 2 bytes.
    text = "[" + "é" * (LIMITS.max_bytes // 2) + "]"
    with pytest.raises(Malformed, match="over the limit"):
        check(text, headers(), "application/json", "utf-8", lambda: json.loads(text), KNOWN, LIMITS)
    with pytest.raises(Malformed, match="body is empty"):
        check("", headers(), "application/json", "utf-8", lambda: "", KNOWN, LIMITS)
