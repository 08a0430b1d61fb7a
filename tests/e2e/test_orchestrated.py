"""The orchestrated saga mode: same domains, same outcomes, commands instead of reactions."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from tests.helpers import settled, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def orchestrated(settings, tmp_path_factory):
    """A second stack in its own namespace and run folder, started in orchestrated mode."""
    from choreo.ops.stack import process_names
    from tests.e2e.conftest import own_stack_settings, start_stack

    root = tmp_path_factory.mktemp("orchestrated")
    s, env = own_stack_settings(settings, root, "orch", saga_mode="orchestrated")
    stack = start_stack(s, env=env, names=[n for n in process_names(s) if n != "flower"])
    yield s, stack, env
    for name in reversed(process_names(s)):
        stack.stop(name)


def test_every_path_ends_as_in_choreography(orchestrated):
    from choreo.infra.db import engine_for
    from choreo.ops.scenarios import SCENARIOS
    from choreo.ops.workload import expected_by_scenario, publish_orders
    from consumers.orchestrator.tables import SagaState

    s, _, _ = orchestrated
    sent = publish_orders(s, list(SCENARIOS), seed=None)
    states = settled(s, [o for o, _ in sent])
    expected = expected_by_scenario()
    assert {o: states[o] for o, _ in sent} == {o: expected[sc] for o, sc in sent}
    with Session(engine_for(s, "orchestrator")) as db:
        sagas = {r.order_id: r for r in db.exec(select(SagaState))}
    by = dict((sc, o) for o, sc in sent)
    assert sagas[by["completed"]].status == "completed" and sagas[by["completed"]].done == [
        "charge",
        "reserve",
        "ship",
    ]
    # Compensation undoes completed steps in reverse order: stock first, then the charge.
    assert sagas[by["undeliverable"]].undone == ["reserve", "charge"]
    assert (
        sagas[by["out_of_stock"]].undone == ["charge"]
        and sagas[by["out_of_stock"]].status == "cancelled"
    )
    assert sagas[by["declined"]].status == "cancelled" and sagas[by["declined"]].undone == []
    assert sagas[by["needs_attention"]].status == "failed"


def test_a_client_hears_every_outcome_in_this_mode_too(orchestrated):
    """The order service announces outcomes in either mode: here the orchestrator marks its saga
    failed, and the order service says order.needs_attention."""
    import json

    from choreo.messaging.access import OUTCOMES
    from choreo.messaging.admin import BrokerAdmin
    from choreo.ops.workload import publish_orders

    s, _, _ = orchestrated
    heard: dict[str, str] = {}
    with BrokerAdmin(s, service="operator") as admin:
        ch = admin.conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        for key in OUTCOMES:
            ch.queue_bind(queue, f"{s.namespace}.events", key)
        sent = publish_orders(s, ["completed", "declined", "needs_attention"], seed=None)
        by = {sc: o for o, sc in sent}

        def all_heard() -> bool:
            method, _, body = ch.basic_get(queue, auto_ack=True)
            while method is not None:
                [[event], _, _] = json.loads(body)
                heard[event["order_id"]] = event["type"]
                method, _, body = ch.basic_get(queue, auto_ack=True)
            return set(by.values()) <= set(heard)

        wait_for(all_heard, timeout=120, what="an outcome for each order")
    assert {sc: heard[o] for sc, o in by.items()} == {
        "completed": "order.completed",
        "declined": "order.cancelled",
        "needs_attention": "order.needs_attention",
    }


def test_topology_has_commands_instead_of_reactions(orchestrated):
    from consumers.registry import topology
    from tests.conftest import VHOST, rabbitmqctl

    s, _, _ = orchestrated
    rows = [
        line.split("\t")
        for line in rabbitmqctl(
            "list_bindings",
            "-p",
            VHOST,
            "--no-table-headers",
            "source_name",
            "routing_key",
            "destination_name",
        ).splitlines()
        if line.strip()
    ]
    actual = {(a, b, c) for a, b, c in rows if a.startswith(s.namespace)}
    assert actual == topology(s).expected_bindings()
    assert (f"{s.namespace}.events", "charge_payment", f"{s.namespace}.payment") in actual
    assert not [r for r in actual if r[2] == f"{s.namespace}.payment" and r[1] == "order.placed"]


def test_a_killed_orchestrator_resumes_where_it_was(orchestrated):
    from choreo.ops.workload import publish_orders
    from tests.e2e.conftest import start_stack

    s, stack, env = orchestrated
    sent = publish_orders(s, ["completed", "undeliverable", "out_of_stock"] * 5, seed=None)
    killed = stack.kill("worker-orchestrator")
    assert killed, "the orchestrator was running"
    start_stack(s, env=env, names=["worker-orchestrator"])
    states = settled(s, [o for o, _ in sent], timeout=120)
    assert sorted({st for st, _ in states.values()}) == ["CANCELLED", "COMPLETED"]
