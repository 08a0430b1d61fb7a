"""The retention cleaner on the running stack, orders flowing: a backlog of thousands of rows past
their windows in every database is removed while the workers process orders; every row inside its
window stays (the flowing orders' inbox, copies and outbox rows among them), every order ends where
its data says and the audit finds nothing wrong. Prints the longest delete transaction (the longest
write lock the cleaner held), the figure docs/operating/retention.md quotes:

    .venv/bin/python -m pytest tests/e2e/test_retention_stack.py -s
    CHOREO_TEST_DATABASE_SERVER=postgresql://postgres:postgres@127.0.0.1:5432 \\
        .venv/bin/python -m pytest tests/e2e/test_retention_stack.py -s
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.helpers import scrape, settled, wait_for

pytestmark = pytest.mark.e2e

# CI's size; the figures in docs/operating/retention.md come from RETENTION_BACKLOG_SCALE=4 (and
# 25 orders of each path instead of 10).
SCALE = int(os.environ.get("RETENTION_BACKLOG_SCALE", "1"))
BACKLOG = {
    "inbox": 5_000 * SCALE,
    "outbox": 5_000 * SCALE,
    "copies": 750 * SCALE,
    "dead_letters": 750 * SCALE,
}
REPLAYS = 500 * SCALE
KEPT = 50  # rows per kind an hour inside their window: they stay


def _row(kind: str, service: str, key: str, at) -> dict:
    return {
        "inbox": {
            "consumer": service,
            "event_id": key,
            "type": "old.event",
            "order_id": "retention-backlog",
            "processed_at": at,
        },
        "outbox": {
            "event_id": key,
            "type": "old.event",
            "order_id": "retention-backlog",
            "body": "{}",
            "created_at": at,
            "sent_at": at,  # sent: an unsent row would be published by the relay
        },
        "copies": {
            "event_id": key,
            "digest": "0" * 64,
            "sender": service,
            "kind": "retry",
            "created_at": at,
        },
        "dead_letters": {
            "event_id": key,
            "type": "old.event",
            "reason": "old",
            "dead_lettered_at": at,
        },
        "replays": {
            "run_id": key[:36],
            "replayed_at": at,
            "by": "retention-test",
            "domain": "payment",
            "event_id": key,
            "type": "old.event",
            "reason": "old",
            "outcome": "replayed",
        },
    }[kind]


def _fill(settings, service: str, kind, tag: str, old: int, kept: int) -> None:
    from choreo.infra.schema import upgraded
    from models.tables import utcnow

    window = timedelta(seconds=kind.window(settings))
    now = utcnow()
    rows = [
        _row(kind.name, service, f"{tag}-old-{i}", now - window - timedelta(hours=1, seconds=i))
        for i in range(old)
    ]
    rows += [
        _row(kind.name, service, f"{tag}-kept-{i}", now - window + timedelta(hours=1))
        for i in range(kept)
    ]
    with upgraded(settings, service).begin() as conn:
        conn.execute(kind.table.insert(), rows)


def _count(settings, service: str, kind, like: str) -> int:
    from choreo.infra.db import engine_for

    t = kind.table
    with engine_for(settings, service).connect() as conn:
        n = conn.execute(
            select(func.count()).select_from(t).where(t.c.event_id.like(like))
        ).scalar_one()
        conn.rollback()
    return int(n)


def _workers_deleted(settings) -> float:
    """What the stack's workers' own cleaners removed so far (they run beside the test's)."""
    return sum(
        v
        for d in settings.domains
        for (name, _labels), v in scrape(settings, d).items()
        if name == "choreo_retention_deleted_total"
    )


@pytest.fixture(scope="module")
def backlog(settings, stack):
    from choreo.app.retention import COMMON_KINDS, OPERATOR_KINDS

    tag = f"ret{uuid.uuid4().hex[:8]}"
    before = _workers_deleted(settings)
    for service in settings.domains:
        for kind in COMMON_KINDS:
            _fill(settings, service, kind, tag, BACKLOG[kind.name], KEPT)
    _fill(settings, "operator", OPERATOR_KINDS[0], tag, REPLAYS, KEPT)
    return tag, before


def test_a_dry_run_counts_the_backlog_and_removes_nothing(settings, backlog):
    """On the operator's records, which no worker cleans (the workers' own cleaners may take the
    domains' backlog at any moment)."""
    from click.testing import CliRunner

    from choreo.app.retention import OPERATOR_KINDS, cleaned_services
    from choreo.cli.base import cli

    tag, _ = backlog
    result = CliRunner().invoke(cli, ["retention", "run", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["dry_run"] and doc["deleted"] == 0
    assert {s["service"] for s in doc["swept"]} == set(cleaned_services(settings))
    counts = {(s["service"], s["kind"]): s["would_delete"] for s in doc["swept"]}
    assert counts[("operator", "replays")] >= REPLAYS
    assert _count(settings, "operator", OPERATOR_KINDS[0], f"{tag}-old-%") == REPLAYS


def test_the_backlog_goes_while_orders_flow_and_nothing_inside_a_window_does(settings, backlog):
    """The test's cleaner runs beside the workers' own (every minute): between them every row
    of the backlog is removed exactly once."""
    from choreo.app.retention import COMMON_KINDS, OPERATOR_KINDS, Run
    from choreo.ops.audit import run_audit
    from choreo.ops.retention import run_retention
    from choreo.ops.scenarios import SCENARIOS
    from choreo.ops.workload import expected_by_scenario, publish_orders
    from models.tables import Inbox, table_of

    tag, workers_before = backlog
    runs: list[Run] = []
    done = threading.Event()
    failed: list[BaseException] = []

    def clean() -> None:
        try:
            while not done.is_set():  # again and again while the orders flow
                runs.append(run_retention(settings))
        except BaseException as exc:  # the test's thread: say it in the main thread
            failed.append(exc)

    cleaner = threading.Thread(target=clean, name="retention-test")
    cleaner.start()
    try:
        sent = publish_orders(settings, list(SCENARIOS) * (25 if SCALE > 1 else 10), seed=None)
        states = settled(settings, [o for o, _ in sent], timeout=240)
    finally:
        done.set()
        cleaner.join(timeout=120)
    assert not failed, failed
    runs.append(run_retention(settings))  # whatever the last pass left, and proof none is left

    expected = expected_by_scenario()
    assert {o: states[o] for o, _ in sent} == {o: expected[s] for o, s in sent}
    for service in settings.domains:
        for kind in COMMON_KINDS:
            assert _count(settings, service, kind, f"{tag}-old-%") == 0, (service, kind.name)
            assert _count(settings, service, kind, f"{tag}-kept-%") == KEPT, (
                service,
                kind.name,
            )
    assert _count(settings, "operator", OPERATOR_KINDS[0], f"{tag}-old-%") == 0
    assert _count(settings, "operator", OPERATOR_KINDS[0], f"{tag}-kept-%") == KEPT
    # The flowing orders' proof of what each service applied is all there: every order's
    # place_order in the order service's inbox.
    from choreo.infra.db import engine_for

    ours = [o for o, _ in sent]
    inbox = table_of(Inbox)
    with engine_for(settings, "order").connect() as conn:
        placed = conn.execute(
            select(func.count())
            .select_from(inbox)
            .where(inbox.c.order_id.in_(ours), inbox.c.type == "place_order")
        ).scalar_one()
        conn.rollback()
    assert placed == len(ours)
    checks = run_audit(settings)
    assert not [c.name for c in checks if c.error]
    wrong = {c.name: {o: why for o, why in c.problems.items() if o in set(ours)} for c in checks}
    assert not {name: p for name, p in wrong.items() if p}, wrong

    ours_deleted = sum(r.deleted for r in runs)
    expected_deleted = len(settings.domains) * sum(BACKLOG.values()) + REPLAYS

    def by_workers() -> float:
        return _workers_deleted(settings) - workers_before

    # A worker's run counts its rows when it ends: wait for any run under way to finish.
    wait_for(
        lambda: ours_deleted + by_workers() >= expected_deleted,
        timeout=180,
        what="the workers' cleaners to report what they removed",
    )
    deleted = ours_deleted + by_workers()
    assert deleted == expected_deleted  # every row once: none twice, none missed
    batches = [s for r in runs for s in r.swept if s.batches]
    longest = max(batches, key=lambda s: s.longest)
    n = sum(s.batches for s in batches)
    dialect = "postgresql" if settings.database_server else "sqlite"
    print(
        f"\nretention on {dialect}: removed {ours_deleted} rows (the workers' cleaners "
        f"{by_workers():.0f}) in {n} batches of at most "
        f"{settings.retention_batch} while {len(sent)} orders flowed; delete transaction mean "
        f"{sum(s.held for s in batches) / n * 1000:.1f} ms, longest "
        f"{longest.longest * 1000:.1f} ms ({longest.service} {longest.kind})"
    )
