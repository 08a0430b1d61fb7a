"""The retention cleaner on real SQLite files: it removes exactly the rows older than each kind's
window (a row exactly as old as its window stays), never an unsent outbox row, at most
`retention_batch` rows per transaction, and nothing in a dry run."""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from choreo.app.retention import (
    COMMON_KINDS,
    OPERATOR_KINDS,
    Kind,
    kinds_of,
    sweep_kind,
    sweep_service,
)
from choreo.infra.db import dispose_engines, engine_for
from choreo.infra.schema import upgraded
from config.settings import SERVICES, Settings
from models.tables import Outbox, table_of

NOW = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
KINDS = {k.name: k for k in (*COMMON_KINDS, *OPERATOR_KINDS)}


def settings_in(tmp_path, **over) -> Settings:
    return Settings(
        data_dir=tmp_path,
        run_dir=tmp_path,
        database_server="",
        **{f"{s}_database_url": "" for s in SERVICES},
        **over,
    )


@pytest.fixture
def db(tmp_path):
    s = settings_in(tmp_path, retention_batch=3)
    engines = {service: upgraded(s, service) for service in ("payment", "operator")}
    yield s, engines
    dispose_engines(str(tmp_path))


def row(kind: Kind, i: int, at: datetime) -> dict:
    """A valid row of `kind` whose time column says `at` (an outbox row: sent at `at`)."""
    key = f"e{i}"
    return {
        "inbox": {
            "consumer": "payment",
            "event_id": key,
            "type": "t",
            "order_id": "o",
            "processed_at": at,
        },
        "copies": {
            "event_id": key,
            "digest": "d",
            "sender": "order",
            "kind": "retry",
            "created_at": at,
        },
        "outbox": {
            "event_id": key,
            "type": "t",
            "order_id": "o",
            "body": "{}",
            "created_at": at,
            "sent_at": at,
        },
        "dead_letters": {"event_id": key, "type": "t", "reason": "r", "dead_lettered_at": at},
        "replays": {
            "run_id": "r",
            "replayed_at": at,
            "by": "me",
            "domain": "payment",
            "event_id": key,
            "type": "t",
            "reason": "r",
            "outcome": "replayed",
        },
    }[kind.name]


def insert(engine, kind: Kind, ats: list[datetime], start: int = 0) -> None:
    with engine.begin() as conn:
        conn.execute(kind.table.insert(), [row(kind, start + i, at) for i, at in enumerate(ats)])


def left(engine, kind: Kind) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(kind.table.c.event_id)).scalars())


def service_of(kind: Kind) -> str:
    return "operator" if kind in OPERATOR_KINDS else "payment"


@pytest.mark.parametrize("name", sorted(KINDS))
def test_removes_exactly_the_rows_older_than_the_window(db, name):
    s, engines = db
    kind = KINDS[name]
    engine = engines[service_of(kind)]
    cutoff = NOW - timedelta(seconds=kind.window(s))
    us = timedelta(microseconds=1)
    ats = [cutoff - timedelta(days=400), cutoff - us, cutoff, cutoff + us, NOW]
    insert(engine, kind, ats)
    swept = sweep_kind(engine, service_of(kind), kind, s, now=NOW)
    # e0 (long gone) and e1 (a microsecond too old) go; the boundary row and younger stay.
    assert left(engine, kind) == {"e2", "e3", "e4"}
    assert (swept.count, swept.batches, swept.capped) == (2, 1, False)
    assert swept.cutoff == cutoff
    again = sweep_kind(engine, service_of(kind), kind, s, now=NOW)
    assert again.count == 0 and left(engine, kind) == {"e2", "e3", "e4"}


def test_the_window_is_read_in_any_timezone(db):
    """A clock in another zone means the same instant: the cutoff is compared in UTC, as stored."""
    s, engines = db
    kind = KINDS["inbox"]
    engine = engines["payment"]
    cutoff = NOW - timedelta(seconds=kind.window(s))
    insert(engine, kind, [cutoff - timedelta(seconds=1), cutoff + timedelta(seconds=1)])
    elsewhere = NOW.astimezone(__import__("zoneinfo").ZoneInfo("Pacific/Auckland"))
    assert sweep_kind(engine, "payment", kind, s, now=elsewhere).count == 1
    assert left(engine, kind) == {"e1"}


def test_an_unsent_outbox_row_is_never_removed_however_old(db):
    s, engines = db
    engine, kind = engines["payment"], KINDS["outbox"]
    t = table_of(Outbox)
    ancient = NOW - timedelta(days=3650)
    with engine.begin() as conn:
        conn.execute(
            t.insert(),
            [
                {**row(kind, 0, ancient), "sent_at": None},
                {**row(kind, 1, ancient), "sent_at": None, "created_at": NOW},
                row(kind, 2, ancient),  # sent ten years ago
            ],
        )
    assert sweep_kind(engine, "payment", kind, s, now=NOW).count == 1
    assert left(engine, kind) == {"e0", "e1"}


def test_a_batch_removes_at_most_retention_batch_rows_oldest_first(db):
    s, engines = db  # retention_batch=3
    engine, kind = engines["payment"], KINDS["inbox"]
    old = NOW - timedelta(seconds=kind.window(s) + 3600)
    insert(engine, kind, [old - timedelta(seconds=i) for i in range(10)])  # e9 the oldest
    one = sweep_kind(engine, "payment", kind, s, now=NOW, max_batches=1)
    assert (one.count, one.batches, one.capped) == (3, 1, True)
    assert left(engine, kind) == {f"e{i}" for i in range(7)}  # the three oldest went
    rest = sweep_kind(engine, "payment", kind, s, now=NOW)
    # 7 left: batches of 3, 3, 1 (the short one says none is left).
    assert (rest.count, rest.batches, rest.capped) == (7, 3, False)
    assert left(engine, kind) == set()
    assert rest.longest > 0


def test_a_dry_run_counts_and_removes_nothing(db):
    s, engines = db
    engine = engines["payment"]
    for kind in COMMON_KINDS:
        cutoff = NOW - timedelta(seconds=kind.window(s))
        insert(engine, kind, [cutoff - timedelta(hours=1)] * 4 + [NOW])
    swept = sweep_service(s, "payment", engine, now=NOW, dry_run=True)
    assert {x.kind: x.count for x in swept} == {k.name: 4 for k in COMMON_KINDS}
    assert all(x.batches == 0 and x.dry_run for x in swept)
    assert all(len(left(engine, k)) == 5 for k in COMMON_KINDS)
    assert swept[0].as_dict()["would_delete"] == 4


def test_a_service_without_a_database_is_left_alone(tmp_path):
    s = settings_in(tmp_path)
    engine = engine_for(s, "operator")
    try:
        swept = sweep_service(s, "operator", engine, now=NOW)
        assert [(x.kind, x.absent, x.count) for x in swept] == [("replays", True, 0)]
        assert not (tmp_path / "operator.db").exists()  # not created by looking
    finally:
        dispose_engines(str(tmp_path))


def test_which_kinds_each_service_has():
    assert kinds_of("payment") == COMMON_KINDS
    assert kinds_of("operator") == OPERATOR_KINDS
    assert kinds_of("gateway") == () and kinds_of("user") == ()


def test_a_service_adds_kinds_of_its_own_with_a_retention_module(db, monkeypatch):
    """The extension point: `consumers/<service>/retention.py` listing `KINDS`."""
    s, engines = db
    engine = engines["payment"]
    own = Kind(
        "old_sent", Outbox, "created_at", "retention_outbox", also=lambda t: [t.c.type == "x"]
    )
    hook = types.ModuleType("consumers.payment.retention")
    hook.KINDS = [own]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "consumers.payment.retention", hook)
    assert kinds_of("payment") == (*COMMON_KINDS, own)
    old = NOW - timedelta(days=30)
    with engine.begin() as conn:
        conn.execute(
            table_of(Outbox).insert(),
            [
                {**row(KINDS["outbox"], 0, old), "sent_at": None, "type": "x"},
                {**row(KINDS["outbox"], 1, old), "sent_at": None, "type": "y"},
            ],
        )
    swept = {x.kind: x.count for x in sweep_service(s, "payment", engine, now=NOW)}
    assert swept["old_sent"] == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table_of(Outbox))).scalar_one() == 1


def test_the_audit_excuses_attention_older_than_the_dead_letter_window(tmp_path):
    """An order that has needed attention for longer than `retention_dead_letters` lost its
    dead-letter record to the cleaner by design; a younger one without its record still offends."""
    from choreo.ops.audit import Check, Snapshot, check_terminal

    s = settings_in(tmp_path)
    snap = Snapshot(s)
    now = datetime.now(UTC)
    kept = timedelta(seconds=s.retention_dead_letters)
    snap.dead_letters = {"payment": [("e1", "explained", "t", "r")]}
    snap.views = {
        "explained": ("NEEDS_ATTENTION", "compensation_failed", 1, 0, [], now),
        "aged": (
            "NEEDS_ATTENTION",
            "compensation_failed",
            1,
            0,
            [],
            now - kept - timedelta(hours=1),
        ),
        "young": (
            "NEEDS_ATTENTION",
            "compensation_failed",
            1,
            0,
            [],
            now - kept + timedelta(hours=1),
        ),
        "naive_text": (
            "NEEDS_ATTENTION",
            "x",
            1,
            0,
            [],
            (now - kept / 2).replace(tzinfo=None).isoformat(" "),
        ),
    }
    c = Check("terminal", "")
    check_terminal(snap, c)
    assert c.offenders == ["naive_text", "young"]
