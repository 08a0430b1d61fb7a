"""Dead-letter replay that cannot hurt, against the real stack: a dry run moves nothing, an
execute moves exactly what it listed, a replayed event the consumer already processed is
absorbed, and the record lists every replay."""

from __future__ import annotations

import uuid

from sqlmodel import Session, func, select

from tests.e2e.test_duplicates_and_poison import world
from tests.helpers import celery_message, queues_idle, settled, wait_for


def _letters(settings, domain="payment") -> dict:
    from choreo.messaging.admin import BrokerAdmin

    with BrokerAdmin(settings) as admin:
        return {v.event_id: v for v in admin.peek(domain, 1000)}


def _leave_in_dlq(settings, envelope: dict, reason: str) -> None:
    """Put a copy of a delivered event in the payment DLQ, as a crash between a dead letter's
    publish and its ack (or an old replay) leaves one: same task id, the dead-letter headers,
    and the payment service's record of the copy, written before it was published."""
    from choreo.app import copies
    from choreo.infra.db import engine_for
    from choreo.messaging.access import sender_header
    from choreo.messaging.admin import BrokerAdmin
    from choreo.messaging.topology import Names
    from choreo.messaging.wire import dead_letter_headers

    body, headers = celery_message(envelope["type"], [envelope], task_id=envelope["event_id"])
    copy = copies.copy_of(envelope["event_id"], "order", envelope["type"], [envelope], {})
    copies.record_now(
        engine_for(settings, "payment"), [copies.Made(copy, "order", copies.DEAD_LETTER, 4)]
    )
    # As the payment worker writes its dead letters: as itself, saying who sent the original.
    headers.update(dead_letter_headers(reason, "payment", 4, False), **sender_header("order"))
    with BrokerAdmin(settings, service="payment") as admin:
        admin.publish_raw(
            "payment",
            body,
            headers,
            exchange=Names(settings.namespace).dlx,
            message_id=envelope["event_id"],
        )


def _order_placed(settings, order_id: str) -> dict:
    from choreo.infra.db import engine_for
    from models.envelope import Envelope
    from models.tables import Outbox

    with Session(engine_for(settings, "order")) as s:
        row = s.exec(
            select(Outbox).where(Outbox.order_id == order_id, Outbox.type == "order.placed")
        ).one()
    return Envelope.model_validate_json(row.body).to_wire()


def _charges(settings, order_id: str) -> int:
    from choreo.infra.db import engine_for
    from consumers.payment.tables import Charge

    with Session(engine_for(settings, "payment")) as s:
        return s.exec(
            select(func.count()).select_from(Charge).where(Charge.order_id == order_id)
        ).one()


def test_a_dry_run_moves_nothing_and_execute_moves_exactly_what_it_listed(settings, stack):
    from choreo.ops import replay as rp
    from choreo.ops.workload import publish_orders

    ids = [
        o
        for o, _ in publish_orders(
            settings, ["completed", "completed", "needs_attention"], seed=None
        )
    ]
    done = settled(settings, ids)
    assert done[ids[2]] == ("NEEDS_ATTENTION", "compensation_failed")
    failed = wait_for(
        lambda: [v for v in _letters(settings).values() if v.order_id == ids[2]],
        30,
        what="the refund's dead letter",
    )[0]
    a, b = (_order_placed(settings, o) for o in ids[:2])
    _leave_in_dlq(settings, a, "test: a copy a crash left behind")
    _leave_in_dlq(settings, b, "test: a copy a crash left behind")
    wait_for(
        lambda: {a["event_id"], b["event_id"]} <= set(_letters(settings)),
        10,
        what="the copies in the DLQ",
    )
    queues_idle(settings)
    before_letters, before_world = set(_letters(settings)), world(settings)
    before_records = len(rp.history(settings, "payment", 10_000))

    plan = {
        c.letter.event_id: c for c in rp.plan(settings, "payment", [a["event_id"], failed.event_id])
    }
    assert set(plan) == {a["event_id"], failed.event_id}
    assert plan[a["event_id"]].already_processed is True and plan[a["event_id"]].effect.startswith(
        "absorbed"
    )
    assert (
        plan[failed.event_id].already_processed is False
        and plan[failed.event_id].effect == "runs again"
    )
    # the dry run changed nothing: same dead letters, same world, no record
    assert set(_letters(settings)) == before_letters
    assert world(settings) == before_world
    assert len(rp.history(settings, "payment", 10_000)) == before_records

    run = rp.execute(settings, "payment", [a["event_id"]], by="test-operator")
    assert [(r.event_id, r.outcome, r.already_processed, r.by) for r in run.records] == [
        (a["event_id"], "replayed", True, "test-operator")
    ]
    left = set(_letters(settings))
    assert (
        a["event_id"] not in left and {b["event_id"], failed.event_id} <= left
    )  # exactly the listed one moved
    queues_idle(settings)
    assert world(settings) == before_world, "an already-processed event replayed changed something"
    assert _charges(settings, ids[0]) == 1


def test_replaying_the_same_message_twice_changes_nothing_and_both_are_recorded(settings, stack):
    from choreo.ops import replay as rp
    from choreo.ops.workload import publish_orders

    (order_id,) = [o for o, _ in publish_orders(settings, ["completed"], seed=None)]
    assert settled(settings, [order_id])[order_id] == ("COMPLETED", None)
    env = _order_placed(settings, order_id)
    for _ in range(2):  # two copies: a replay whose ack was lost, replayed again
        _leave_in_dlq(settings, env, "test: left twice")
    wait_for(lambda: env["event_id"] in _letters(settings), 10, what="the copies")
    queues_idle(settings)
    before = world(settings)
    first = rp.execute(settings, "payment", [env["event_id"]], limit=1, by="first")
    assert [r.outcome for r in first.records] == ["replayed"]
    (again,) = rp.plan(settings, "payment", [env["event_id"]])
    assert again.replayed_before == 1 and again.already_processed is True
    second = rp.execute(settings, "payment", [env["event_id"]], by="second")
    assert [r.outcome for r in second.records] == ["replayed"]
    assert env["event_id"] not in _letters(settings)
    queues_idle(settings)
    assert world(settings) == before and _charges(settings, order_id) == 1
    history = rp.history(settings, "payment", event_id=env["event_id"])
    assert [(r.by, r.outcome, r.already_processed) for r in history] == [
        ("second", "replayed", True),
        ("first", "replayed", True),
    ]
    assert history[0].run_id != history[1].run_id


def test_the_cli_dry_runs_by_default_and_records_with_execute(settings, stack):
    import json

    from click.testing import CliRunner

    from choreo.cli import cli
    from choreo.ops.workload import publish_orders

    (order_id,) = [o for o, _ in publish_orders(settings, ["completed"], seed=None)]
    settled(settings, [order_id])
    env = _order_placed(settings, order_id)
    _leave_in_dlq(settings, env, "test: via the cli")
    wait_for(lambda: env["event_id"] in _letters(settings), 10, what="the copy")
    runner = CliRunner()
    dry = runner.invoke(cli, ["dlq", "replay", "payment", "--id", env["event_id"], "--json"])
    assert dry.exit_code == 0, dry.output
    shown = json.loads(dry.output)
    assert shown["dry_run"] is True and [c["event_id"] for c in shown["would_replay"]] == [
        env["event_id"]
    ]
    assert shown["would_replay"][0]["effect"].startswith("absorbed")
    assert env["event_id"] in _letters(settings)
    done = runner.invoke(
        cli, ["dlq", "replay", "payment", "--id", env["event_id"], "--execute", "--json"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["moved"] == 1 and env["event_id"] not in _letters(settings)
    listed = runner.invoke(cli, ["dlq", "replays", "payment", "--id", env["event_id"], "--json"])
    assert [r["event_id"] for r in json.loads(listed.output)] == [env["event_id"]]
    nothing = runner.invoke(
        cli, ["dlq", "replay", "payment", "--id", f"evt-none-{uuid.uuid4().hex}", "--execute"]
    )
    assert nothing.exit_code != 0 and "not replayed" in nothing.output


def test_peeking_a_dead_letter_many_times_never_moves_it(settings, stack):
    """A peek returns the message to its DLQ (a quorum queue counts that as a failed delivery);
    past a delivery limit the broker would dead-letter it, which here means back to its queue."""
    from choreo.ops.workload import publish_orders

    (order_id,) = [o for o, _ in publish_orders(settings, ["completed"], seed=None)]
    settled(settings, [order_id])
    env = _order_placed(settings, order_id)
    _leave_in_dlq(settings, env, "test: peeked often")
    wait_for(lambda: env["event_id"] in _letters(settings), 10, what="the copy")
    for _ in range(25):  # RabbitMQ 4's default delivery limit is 20
        assert env["event_id"] in _letters(settings)
    queues_idle(settings)
    assert env["event_id"] in _letters(settings)


def test_a_dead_letter_whose_order_this_stack_never_saw_is_marked(settings, stack):
    """An earlier stack in the same namespace left a dead letter: `choreo order` cannot find its
    order, so `dlq list` and `peek` mark it and the dry run does not promise it "runs again"."""
    import json

    from click.testing import CliRunner

    from choreo.cli import cli
    from choreo.ops import replay as rp
    from choreo.ops.workload import publish_orders

    (order_id,) = [o for o, _ in publish_orders(settings, ["completed"], seed=None)]
    settled(settings, [order_id])
    ours = _order_placed(settings, order_id)
    stranger = f"ord-earlier-{uuid.uuid4().hex[:8]}"
    theirs = {
        **ours,
        "event_id": str(uuid.uuid4()),
        "order_id": stranger,
        "correlation_id": stranger,
    }
    _leave_in_dlq(settings, ours, "test: this stack's")
    _leave_in_dlq(settings, theirs, "test: an earlier stack's")
    wait_for(
        lambda: {ours["event_id"], theirs["event_id"]} <= set(_letters(settings)),
        10,
        what="both dead letters",
    )
    runner = CliRunner()
    listed = runner.invoke(cli, ["dlq", "list", "payment", "--limit", "1000", "--json"])
    assert listed.exit_code == 0, listed.output
    known = {i["event_id"]: i["order_known"] for i in json.loads(listed.output)}
    assert known[ours["event_id"]] is True and known[theirs["event_id"]] is False
    table = runner.invoke(cli, ["dlq", "list", "payment", "--limit", "1000"])
    # One row marked (the table folds it over lines), and the mark explained.
    assert table.output.count("(unknown") == 1, table.output
    assert "unknown order: not in this stack's order database" in table.output
    peeked = runner.invoke(cli, ["dlq", "peek", "payment", "--limit", "1000"])
    by_id = {i["event_id"]: i for i in json.loads(peeked.output)}
    assert by_id[theirs["event_id"]]["order_known"] is False

    plan = {c.letter.event_id: c for c in rp.plan(settings, "payment", [theirs["event_id"]])}
    assert plan[theirs["event_id"]].order_known is False
    assert plan[theirs["event_id"]].effect.startswith(f"order unknown: {stranger}")
    dry = runner.invoke(cli, ["dlq", "replay", "payment", "--id", theirs["event_id"], "--json"])
    (shown,) = json.loads(dry.output)["would_replay"]
    assert shown["order_known"] is False and shown["effect"].startswith("order unknown")
    assert theirs["event_id"] in _letters(settings)  # a dry run: nothing moved
