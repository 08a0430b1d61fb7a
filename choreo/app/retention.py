"""The retention cleaner: removes each kind of record once it is older than its window
(docs/operating/retention.md), in short batches, so the hot path's transactions interleave with it.

A kind is a table, the time column that ages its rows and the setting that holds its window in
seconds. Every domain's database holds `COMMON_KINDS`; the operator's holds `OPERATOR_KINDS`; a
service adds kinds of its own with a `consumers/<service>/retention.py` whose `KINDS` lists them
(the cleaner finds it by the service's name, as it finds `timers.py`).

Each batch is one transaction that deletes at most `retention_batch` of the oldest eligible rows,
chosen by key in the same statement (SQLite: by rowid; PostgreSQL: by primary key, with
`FOR UPDATE SKIP LOCKED`, so two workers cleaning one database take disjoint rows and never wait on
each other). A crash between batches leaves only rows that are still eligible; a crash inside one
rolls it back whole. The cutoff is the process clock (`utcnow`, which wrote every timestamp) minus
the window, taken once per kind per run: a row exactly as old as its window stays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, Table, bindparam, func, inspect, literal_column, select
from sqlalchemy import tuple_ as sql_tuple
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

from config.settings import Settings
from models.services import service_part
from models.tables import OTHERS, CopyRecord, DeadLetter, Inbox, Outbox, ReplayRecord, table_of
from models.tables import utcnow as _utcnow

# One run removes at most this many batches of a kind; the next run goes on where it stopped.
MAX_BATCHES = 1000
# The pause after each batch, at least this long and at least as long as the batch took: the
# cleaner holds a database's write lock at most half the time, whatever the backlog.
MIN_PAUSE = 0.01


@dataclass(frozen=True)
class Kind:
    """One kind of record: its table, the time column that ages a row, the setting that says
    how long a row lives (seconds), and any further condition a row must meet to go."""

    name: str
    model: type[SQLModel]
    column: str
    setting: str
    also: Callable[[Table], Sequence[ColumnElement[bool]]] | None = None

    def window(self, settings: Settings) -> float:
        return float(getattr(settings, self.setting))

    def cutoff(self, settings: Settings, now: datetime) -> datetime:
        """A row older than this goes: `now` minus the window, in UTC."""
        return (now - timedelta(seconds=self.window(settings))).astimezone(UTC)

    @property
    def table(self) -> Table:
        return table_of(self.model)

    def eligible(self) -> list[ColumnElement[bool]]:
        """Rows older than the cutoff (a bind parameter). A NULL time is never older: an unsent
        outbox row (sent_at NULL) is never removed, however old."""
        t = self.table
        extra = list(self.also(t)) if self.also else []
        return [t.c[self.column] < bindparam("cutoff", type_=t.c[self.column].type), *extra]


COMMON_KINDS: tuple[Kind, ...] = (
    Kind("inbox", Inbox, "processed_at", "dedup_retention"),
    Kind("copies", CopyRecord, "created_at", "dedup_retention"),
    Kind("outbox", Outbox, "sent_at", "retention_outbox"),
    Kind("dead_letters", DeadLetter, "dead_lettered_at", "retention_dead_letters"),
)
OPERATOR_KINDS: tuple[Kind, ...] = (
    Kind("replays", ReplayRecord, "replayed_at", "retention_replays"),
)


def kinds_of(service: str) -> tuple[Kind, ...]:
    """Every kind the cleaner removes from `service`'s database: the operator's replay records;
    for a domain (or the orchestrator) the common kinds and its own `retention.KINDS`. The user
    service and the sandbox gateway's books: none."""
    if service == "operator":
        return OPERATOR_KINDS
    if service in OTHERS:
        return ()
    hook = service_part(service, "retention", optional=True)
    return COMMON_KINDS + tuple(getattr(hook, "KINDS", ()))


def cleaned_services(settings: Settings) -> list[str]:
    """The databases `choreo retention run` cleans: every domain's (and the orchestrator's when
    the saga is orchestrated), and the operator's."""
    return [*settings.domains, "operator"]


@dataclass
class Swept:
    """What one run did to one kind in one database (a dry run: what it would do)."""

    service: str
    kind: str
    window: float
    cutoff: datetime
    dry_run: bool = False
    count: int = 0  # rows deleted (a dry run: rows eligible)
    batches: int = 0
    longest: float = 0.0  # seconds: the longest batch's transaction, begin to commit
    held: float = 0.0  # seconds: every batch's transaction, summed
    capped: bool = False  # stopped at MAX_BATCHES (or told to stop) with rows perhaps left
    absent: bool = False  # no such database or table yet: nothing to clean

    def as_dict(self) -> dict:
        return {
            "service": self.service,
            "kind": self.kind,
            "window_seconds": self.window,
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "would_delete" if self.dry_run else "deleted": self.count,
            "batches": self.batches,
            "longest_batch_ms": round(self.longest * 1000, 3),
            "capped": self.capped,
            "absent": self.absent,
        }


@dataclass
class Run:
    """One cleaner run over some databases."""

    swept: list[Swept] = field(default_factory=list)

    @property
    def deleted(self) -> int:
        return sum(s.count for s in self.swept if not s.dry_run)

    @property
    def longest(self) -> float:
        return max((s.longest for s in self.swept), default=0.0)


class _Statements:
    """The delete of one batch and the count of a dry run, for one kind on one dialect."""

    def __init__(self, kind: Kind, dialect: str) -> None:
        t = kind.table
        age = t.c[kind.column]
        where = kind.eligible()
        self.count = select(func.count()).select_from(t).where(*where)
        if dialect == "sqlite":
            # SQLite's writer holds the whole database: no row locks to skip. By rowid, the
            # cheapest key it has.
            rowid: ColumnElement[int] = literal_column("rowid")
            pick = select(rowid).select_from(t).where(*where).order_by(age)
            self.delete = t.delete().where(rowid.in_(pick.limit(bindparam("n"))))
            return
        keys = list(t.primary_key.columns)
        pick = select(*keys).where(*where).order_by(age).limit(bindparam("n"))
        if dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        target = keys[0] if len(keys) == 1 else sql_tuple(*keys)
        self.delete = t.delete().where(target.in_(pick))


def sweep_kind(
    engine: Engine,
    service: str,
    kind: Kind,
    settings: Settings,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    max_batches: int = MAX_BATCHES,
    stop: threading.Event | None = None,
) -> Swept:
    """Remove `kind`'s rows older than its window from `service`'s database, a batch of at most
    `settings.retention_batch` rows per transaction, until none is left or `max_batches` ran (or
    `stop` is set). `now`: the clock (tests pin it)."""
    window = kind.window(settings)
    cutoff = kind.cutoff(settings, now or _utcnow())
    swept = Swept(service, kind.name, window, cutoff, dry_run=dry_run)
    statements = _Statements(kind, engine.dialect.name)
    with engine.connect() as conn:
        present = inspect(conn).has_table(kind.table.name)
        conn.rollback()  # the look ended its own transaction: each batch begins its own
        if not present:
            swept.absent = True
            return swept
        if dry_run:
            swept.count = int(conn.execute(statements.count, {"cutoff": cutoff}).scalar_one())
            conn.rollback()
            return swept
        _batches(conn, statements, swept, settings.retention_batch, max_batches, stop)
    return swept


def _batches(
    conn: Connection,
    statements: _Statements,
    swept: Swept,
    size: int,
    max_batches: int,
    stop: threading.Event | None,
) -> None:
    params = {"cutoff": swept.cutoff, "n": size}
    while True:
        if swept.batches >= max_batches:
            swept.capped = True
            return
        with conn.begin():  # SQLite: BEGIN IMMEDIATE, the write lock from here (choreo.infra.db)
            started = time.perf_counter()
            deleted = conn.execute(statements.delete, params).rowcount
        held = time.perf_counter() - started  # to the commit's return: durable, lock released
        swept.batches += 1
        swept.count += deleted
        swept.longest = max(swept.longest, held)
        swept.held += held
        if deleted < size:
            return  # the last batch was not full: nothing eligible is left
        if _pause(max(MIN_PAUSE, held), stop):
            swept.capped = True
            return


def _pause(seconds: float, stop: threading.Event | None) -> bool:
    """Let the hot path's transactions in; True when told to stop meanwhile."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


def database_present(settings: Settings, service: str, engine: Engine) -> bool:
    """Whether `service`'s database exists (never creates it: SQLite would make an empty file)."""
    url = make_url(settings.database_url(service))
    if url.get_backend_name() == "sqlite":
        return bool(url.database) and Path(url.database or "").exists()
    try:
        with engine.connect() as conn:
            conn.rollback()
    except OperationalError as exc:
        if "does not exist" in str(exc):
            return False
        raise
    return True


def sweep_service(
    settings: Settings,
    service: str,
    engine: Engine,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    max_batches: int = MAX_BATCHES,
    stop: threading.Event | None = None,
) -> list[Swept]:
    """Every kind of `service`'s database, one after another (nothing when it has no database)."""
    kinds = kinds_of(service)
    if not kinds:
        return []
    if not database_present(settings, service, engine):
        at = now or _utcnow()
        return [
            Swept(
                service,
                k.name,
                k.window(settings),
                k.cutoff(settings, at),
                dry_run=dry_run,
                absent=True,
            )
            for k in kinds
        ]
    return [
        sweep_kind(
            engine,
            service,
            kind,
            settings,
            now=now,
            dry_run=dry_run,
            max_batches=max_batches,
            stop=stop,
        )
        for kind in kinds
    ]
