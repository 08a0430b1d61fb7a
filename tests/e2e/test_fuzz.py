"""Fuzz a real worker: Hypothesis makes bodies and header sets; none may take a worker down.

Each example is a batch of deliveries sent raw to the order worker's queue, with a good order
among them. After each batch: every worker has the pid it had, every delivery is accounted for
(processed, by its event id in the order service's inbox, or in the DLQ with a reason), and the
good order completed. CHOREO_FUZZ_BATCHES sets how many batches (default 8).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlmodel import Session, select

from tests.helpers import EMBED, Probe, celery_message, place_order, settled, wait_for, workers

pytestmark = pytest.mark.e2e

FRESH = "<fresh>"  # replaced by a new uuid at send time, so no two deliveries share an event id
CELERY_KEYS = [
    "lang",
    "task",
    "id",
    "root_id",
    "parent_id",
    "group",
    "retries",
    "eta",
    "expires",
    "timelimit",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "shadow",
    "ignore_result",
    "stamps",
    "stamped_headers",
    "replaced_task_nesting",
    "group_index",
    "compression",
    "choreo_attempt",
    "choreo_last_error",
    "x-death",
    "x-delivery-count",
]
TYPES = [
    "place_order",
    "payment.completed",
    "payment.failed",
    "shipment.created",
    "saga.dead_lettered",
    "payment.exploded",
    "",
]

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4),
    max_leaves=10,
)
amqp_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | text
    | st.binary(max_size=16)
    | st.decimals(min_value=-(10**6), max_value=10**6, places=2, allow_nan=False)
    | st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1))
)
amqp_value = st.recursive(
    amqp_leaf,
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.text("abcdefgh-_", min_size=1, max_size=8), c, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def header_sets(draw) -> dict:
    """A plausible header set, then some keys dropped, some set to anything, some invented."""
    task = draw(st.sampled_from(TYPES))
    _, headers = celery_message(task, [], FRESH)
    for key in draw(st.sets(st.sampled_from(sorted(headers)), max_size=3)):
        del headers[key]
    headers.update(draw(st.dictionaries(st.sampled_from(CELERY_KEYS), amqp_value, max_size=3)))
    headers.update(
        draw(st.dictionaries(st.text("abcxyz-_", min_size=1, max_size=10), amqp_value, max_size=2))
    )
    return headers


@st.composite
def envelopes(draw) -> dict:
    """A valid place_order envelope, or one with fields replaced, removed or added."""
    env = place_order(order_id=FRESH)
    env["event_id"] = FRESH
    for _ in range(draw(st.integers(0, 3))):
        payload = env.get("payload")
        target = payload if isinstance(payload, dict) and draw(st.booleans()) else env
        key = draw(st.sampled_from(sorted(target) + ["extra"]))
        if draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(json_value)
    return env


@st.composite
def bodies(draw) -> bytes | object:
    kind = draw(st.sampled_from(["bytes", "json", "frame", "frame", "envelope", "envelope"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return draw(json_value)
    if kind == "frame":  # the protocol-2 frame with one part replaced
        parts = [[draw(envelopes())], {}, dict(EMBED)]
        parts[draw(st.integers(0, 2))] = draw(json_value)
        if draw(st.booleans()):
            parts = parts[: draw(st.integers(0, 3))] + draw(st.lists(json_value, max_size=2))
        return parts
    return [[draw(envelopes())], {}, dict(EMBED)]


deliveries = st.fixed_dictionaries(
    {
        "body": bodies(),
        "headers": st.one_of(
            header_sets(), st.dictionaries(st.sampled_from(CELERY_KEYS), amqp_value, max_size=4)
        ),
        "content_type": st.sampled_from(
            ["application/json"] * 6
            + [
                None,
                "text/plain",
                "application/x-python-serialize",
                "application/x-yaml",
                "application/json; charset=x",
            ]
        ),
        "content_encoding": st.sampled_from(["utf-8"] * 6 + [None, "binary", "latin-1", "utf-16"]),
    }
)


def _fresh(value):
    """The value with every FRESH placeholder replaced by its own new id."""
    if value == FRESH:
        return f"fz-{uuid.uuid4().hex[:20]}"
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value


def _event_id(body) -> str | None:
    """The event id a delivery would be processed under, if its body has that shape at all."""
    try:
        env = body[0][0]
        return env["event_id"] if isinstance(env["event_id"], str) else None
    except (TypeError, KeyError, IndexError):
        return None


def _processed(settings, event_ids: list[str]) -> set[str]:
    from choreo.infra.db import engine_for
    from models.tables import Inbox

    if not event_ids:
        return set()
    with Session(engine_for(settings, "order")) as s:
        return set(
            s.exec(
                select(Inbox.event_id).where(
                    Inbox.consumer == "order", Inbox.event_id.in_(event_ids)
                )
            )
        )


BATCHES = int(os.environ.get("CHOREO_FUZZ_BATCHES", "8"))


@hsettings(
    max_examples=BATCHES,
    deadline=None,
    database=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(batch=st.lists(deliveries, min_size=5, max_size=25))
def test_no_delivery_takes_a_worker_down_and_each_is_accounted_for(settings, stack, batch):
    probe = Probe(settings)
    before = workers(stack)
    sent: dict[str, str | None] = {}  # message id -> the event id it would be processed under
    for d in batch:
        body = _fresh(d["body"])
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        message_id = probe.send(raw, _fresh(d["headers"]), d["content_type"], d["content_encoding"])
        sent[message_id] = _event_id(body) if not isinstance(body, bytes) else None
    good = place_order()
    probe.place(*celery_message("place_order", [good], good["event_id"]))

    def accounted():
        letters = probe.letters()
        done = _processed(settings, [e for e in sent.values() if e])
        missing = [m for m, e in sent.items() if m not in letters and e not in done]
        return (letters, done) if not missing else None

    letters, done = wait_for(
        accounted, 60, interval=0.5, what="every fuzzed delivery processed or dead-lettered"
    )
    for m in sent:
        if m in letters:
            assert letters[m].reason.startswith(("poison: ", "failed after")), letters[m].reason
    assert settled(settings, [good["order_id"]])[good["order_id"]] == ("COMPLETED", None)
    assert workers(stack) == before, "a worker died (or restarted) during the batch"
