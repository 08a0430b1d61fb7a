"""Upgrade from the first release with orders in flight: release 0.1's databases
(tests/fixtures/release-0.1) go through the real `choreo db upgrade`, a stack of this code starts
on them, the orders that were mid-saga reach an end (the unsent outbox row relayed, the overdue
timers fired), new orders of every scenario complete as their data says, and the audit is green.
On SQLite, and on PostgreSQL in `make test`'s second pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import RELEASE_0_1, load_release_0_1, settled, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def choreo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "choreo", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def upgraded(settings, tmp_path):
    """A stack of its own (namespace, folders, databases, ports) on release 0.1's databases,
    upgraded by `choreo db upgrade`."""
    from choreo.infra.db import dispose_engines
    from choreo.ops.stack import process_names
    from tests.e2e.conftest import own_stack_settings, start_stack

    s, env = own_stack_settings(settings, tmp_path, "up")
    load_release_0_1(s)

    done = choreo(env, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    status = choreo(env, "db", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert {d["state"] for d in json.loads(status.stdout)["databases"]} == {"up-to-date"}

    names = [n for n in process_names(s) if n != "flower"]
    stack = start_stack(s, env=env, names=names)
    yield s
    for name in reversed(names):
        stack.stop(name)
    dispose_engines(str(s.data_dir))
    dispose_engines(f"/{s.database_prefix}_")


def test_release_0_1_orders_in_flight_finish_and_new_orders_take_every_path(upgraded):
    from sqlalchemy import func, select

    from choreo.infra.db import engine_for
    from choreo.ops.audit import run_audit
    from choreo.ops.scenarios import SCENARIOS
    from choreo.ops.workload import expected_by_scenario, publish_orders
    from models.tables import Outbox, table_of

    with open(os.path.join(RELEASE_0_1, "orders.json")) as f:
        fixture = json.load(f)
    in_flight = [o for o, _ in fixture["in_flight"]]
    before = {o for o, _ in fixture["settled"]}

    states = settled(upgraded, in_flight, timeout=30)
    # Stuck at shipment, long past their deadline (the fixture is older than any deadline):
    # the order worker's timers cancel and compensate them.
    assert [states[o][0] for o in in_flight[1:]] == ["CANCELLED", "CANCELLED"]
    # This one's inventory.reserved was committed but not published: the relay sends it, and
    # whichever of the shipment and its overdue timer the order service hears first decides.
    assert states[in_flight[0]][0] in ("COMPLETED", "CANCELLED")
    unsent = select(func.count()).where(table_of(Outbox).c.sent_at.is_(None))

    def all_sent() -> bool:
        with engine_for(upgraded, "inventory").connect() as conn:
            return conn.execute(unsent).scalar() == 0

    wait_for(all_sent, 15, what="the inventory's outbox relayed")

    sent = publish_orders(upgraded, list(SCENARIOS), seed=None)
    states = settled(upgraded, [o for o, _ in sent], timeout=30)
    expected = expected_by_scenario()
    assert {o: states[o] for o, _ in sent} == {o: expected[sc] for o, sc in sent}
    assert before.isdisjoint(o for o, _ in sent)

    failed = {c.name: c.problems for c in run_audit(upgraded) if not c.passed}
    assert failed == {}
