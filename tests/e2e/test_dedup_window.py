"""The dedup window on the real stack: a message that occurred longer ago than the window is
dead-lettered with that reason, never applied; `choreo dlq replay` refuses it (the dry run says
why) and runs it only with --force-outside-window, exactly once; the operator's mark is believed
only from the operator's broker user. (A replay inside the window: tests/e2e/test_dlq_replay.py.)"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.test_dlq_replay import _charges, _letters
from tests.helpers import celery_message, queues_idle, settled, sqlite_pass_only, wait_for

# Once, in the SQLite pass: the rule reads the envelope, not the database, and the replay records
# on PostgreSQL are the PostgreSQL pass's test_dlq_replay.
pytestmark = [pytest.mark.e2e, sqlite_pass_only]


def _stale_order(
    settings, by: str = "operator", age: float | None = None, **headers
) -> tuple[str, str]:
    """A place_order that occurred `age` seconds ago (default: a day longer ago than the dedup
    window), published by `by`'s broker user (which the broker stamps as its user_id). Returns
    (order id, event id)."""
    from choreo.messaging.admin import BrokerAdmin
    from choreo.ops.scenarios import make_order
    from models.envelope import make_envelope

    order_id = f"ord-stale-{uuid.uuid4().hex[:8]}"
    age = settings.dedup_window + 86400 if age is None else age
    old = datetime.now(UTC) - timedelta(seconds=age)
    env = make_envelope(
        "place_order", order_id, make_order("completed").payload(), source="cli", now=old
    )
    body, h = celery_message("place_order", [env.to_wire()], env.event_id)
    with BrokerAdmin(settings, service=by) as admin:
        admin.publish_raw("place_order", body, {**h, **headers}, message_id=env.event_id)
    return order_id, env.event_id


def _order_known(settings, order_id: str) -> bool:
    from choreo.app.queries import order_states

    return order_id in order_states(settings, [order_id])


def test_a_message_older_than_the_window_is_dead_lettered_and_replayed_only_when_forced(
    settings, stack
):
    from choreo.ops import replay as rp

    order_id, event_id = _stale_order(settings)
    letter = wait_for(lambda: _letters(settings, "order").get(event_id), 30, what="its dead letter")
    assert letter.reason.startswith("outside dedup window: it occurred 15d ")
    queues_idle(settings)
    assert not _order_known(settings, order_id) and _charges(settings, order_id) == 0

    # The dry run refuses it and says why; an execute without the flag leaves it, recorded.
    (c,) = rp.plan(settings, "order", [event_id])
    assert c.refused and c.effect.startswith(
        "refused: older than the dedup window (14d): its dedup record may be gone and it would "
        "run again"
    )
    refused = rp.execute(settings, "order", [event_id], by="careful")
    assert [r.outcome for r in refused.records] == ["refused_outside_window"]
    assert refused.moved == [] and event_id in _letters(settings, "order")

    # Forced: the dry run says so, the execute moves it, the record says it was forced.
    (f,) = rp.plan(settings, "order", [event_id], force=True)
    assert f.forced and f.effect.startswith("forced outside the dedup window")
    run = rp.execute(settings, "order", [event_id], by="knowing", force=True)
    assert [r.outcome for r in run.records] == ["forced_outside_window"]
    assert event_id not in _letters(settings, "order")
    assert settled(settings, [order_id])[order_id] == ("COMPLETED", None)
    queues_idle(settings)
    assert _charges(settings, order_id) == 1
    history = rp.history(settings, "order", event_id=event_id)
    assert [(r.by, r.outcome) for r in history] == [
        ("knowing", "forced_outside_window"),
        ("careful", "refused_outside_window"),
    ]


def test_the_cli_dry_run_names_the_refusal_and_list_shows_the_reason(settings, stack):
    from click.testing import CliRunner

    from choreo.cli import cli

    _order_id, event_id = _stale_order(settings)
    wait_for(lambda: _letters(settings, "order").get(event_id), 30, what="its dead letter")
    runner = CliRunner()
    out = runner.invoke(cli, ["dlq", "replay", "order", "--id", event_id, "--json"])
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.output)["would_replay"]
    assert row["refused"] and "older than the dedup window" in row["effect"]
    listed = runner.invoke(cli, ["dlq", "list", "order", "--json"])
    (mine,) = [r for r in json.loads(listed.output) if r["event_id"] == event_id]
    assert mine["reason"].startswith("outside dedup window: ") and mine["occurred_at"]
    refused = runner.invoke(cli, ["dlq", "replay", "order", "--id", event_id, "--execute"])
    assert refused.exit_code != 0 and "--force-outside-window" in refused.output
    assert event_id in _letters(settings, "order")


def test_the_forced_mark_from_anyone_but_the_operator_is_ignored(settings, stack):
    from choreo.messaging.access import FORCED_HEADER

    order_id, event_id = _stale_order(settings, by="client", **{FORCED_HEADER: "mallory"})
    letter = wait_for(lambda: _letters(settings, "order").get(event_id), 30, what="its dead letter")
    assert letter.reason.startswith("outside dedup window: ")
    queues_idle(settings)
    assert not _order_known(settings, order_id) and _charges(settings, order_id) == 0


def test_a_message_just_inside_the_window_runs_as_any_other(settings, stack):
    order_id, _event_id = _stale_order(settings, age=settings.dedup_window - 3600)
    assert settled(settings, [order_id])[order_id] == ("COMPLETED", None)
    queues_idle(settings)
    assert _charges(settings, order_id) == 1
