"""Dead-letter replay that cannot hurt: a dry run by default, a record of every replay.

`plan` says what a replay of DOMAIN's dead letters would move, and for each message whether
the consumer's inbox already holds its event (then the replayed copy is absorbed as a
duplicate and changes nothing). A dead letter whose message occurred longer ago than the dedup
window is refused (its dedup record may be gone and it would run again: choreo.app.window)
unless the operator forces it knowingly (`force`), which its record says. `execute` replays, in
bounded batches, each copy confirmed by the broker before its dead letter is acked, and records
each one in the operator's database (`dlq_replays`) with when, by whom and the outcome; `history`
lists those records. The CLI (`choreo dlq replay|replays`) and the operator agent's replay
proposal both go through here.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from choreo.app import window as window_rule
from choreo.app.queries import order_states
from choreo.app.retention import sweep_service
from choreo.infra.db import engine_for
from choreo.infra.schema import upgraded
from choreo.messaging.access import FORCED_HEADER, SENDER_HEADER
from choreo.messaging.admin import FORCED as MOVED_FORCED
from choreo.messaging.admin import UNROUTED, BrokerAdmin, DeadLetterView, Replayed
from config.settings import Settings, duration
from models.tables import Inbox, ReplayRecord, utcnow

log = logging.getLogger("choreo.ops.replay")
MAX_LIMIT = 10_000
# A replay record's outcome: moved back by the broker; forced outside the dedup window (a marked
# copy the operator published); refused, outside the window and not forced.
REPLAYED = "replayed"
FORCED = "forced_outside_window"
REFUSED = "refused_outside_window"
MOVED = (REPLAYED, FORCED)


@dataclass(frozen=True)
class Window:
    """Where a dead letter stands against the dedup window (choreo.app.window), at one moment."""

    outside: bool = False
    # Why a forced replay cannot run it either (empty: it can): only a domain's own recorded copy
    # can carry the operator's mark and still have its original sender proven.
    unforcible: str = ""

    @staticmethod
    def of(settings: Settings, letter: DeadLetterView, now: float) -> Window:
        occurred = window_rule.parse_occurred_at(letter.occurred_at)
        if occurred is None or not window_rule.outside(occurred, now, settings.dedup_window):
            return Window()
        if letter.domain == UNROUTED:
            why = "an unrouted message has no one consumer whose records prove its sender"
        elif SENDER_HEADER not in letter.headers:
            why = "the broker dead-lettered it (no copy of the domain's own names its sender)"
        elif _dead_lettered_outside(settings, letter, now):
            why = (
                "it was dead-lettered longer ago than the dedup window: the domain's record of "
                "the copy, which proves its sender, may be gone"
            )
        elif settings.retry_max_attempts < 1:
            why = "a forced copy goes through the first retry rung, and CHOREO_RETRY_MAX_ATTEMPTS=0"
        else:
            why = ""
        return Window(True, why)


def _dead_lettered_outside(settings: Settings, letter: DeadLetterView, now: float) -> bool:
    at = window_rule.parse_occurred_at(letter.dead_lettered_at)
    return at is not None and window_rule.outside(at, now, settings.dedup_window)


def refusal(settings: Settings) -> str:
    return (
        f"refused: older than the dedup window ({duration(settings.dedup_window)}): its dedup "
        "record may be gone and it would run again"
    )


@dataclass
class Candidate:
    """A dead letter a replay would move, and what the consumer already knows of its event."""

    letter: DeadLetterView
    already_processed: (
        bool | None
    )  # None: could not check (no inbox for `unrouted`, or the database is away)
    replayed_before: int = 0
    # Its order in this stack's order database: False for an earlier stack's dead letter left in
    # the same namespace (`choreo order` cannot find it); None: no order id, or not checked.
    order_known: bool | None = None
    window: Window = field(default_factory=Window)
    force: bool = False  # the operator forces what is outside the window
    refused_because: str = ""  # refusal(settings), when it is outside the window

    @property
    def refused(self) -> bool:
        return self.window.outside and not (self.force and not self.window.unforcible)

    @property
    def forced(self) -> bool:
        return self.window.outside and not self.refused

    @property
    def effect(self) -> str:
        if self.refused:
            if self.window.unforcible:
                return f"{self.refused_because}; it cannot be forced: {self.window.unforcible}"
            return f"{self.refused_because} (--force-outside-window replays it knowingly)"
        if self.already_processed:
            return "absorbed: already processed, changes nothing"
        if self.forced:
            return (
                "forced outside the dedup window: runs again, knowingly (its dedup record may "
                "be gone)"
            )
        if self.order_known is False:
            return (
                f"order unknown: {self.letter.order_id} is not in this stack's order database "
                "(an earlier stack's dead letter?); it would run here, against an order "
                "this stack never saw"
            )
        if self.already_processed is None:
            return "unknown: could not check the consumer's inbox"
        return "runs again"

    def as_dict(self) -> dict:
        return {
            **self.letter.summary(),
            "already_processed": self.already_processed,
            "replayed_before": self.replayed_before,
            "order_known": self.order_known,
            "outside_dedup_window": self.window.outside,
            "refused": self.refused,
            "forced": self.forced,
            "effect": self.effect,
        }


@dataclass
class Run:
    run_id: str
    by: str
    domain: str
    records: list[ReplayRecord] = field(default_factory=list)

    @property
    def moved(self) -> list[ReplayRecord]:
        return [r for r in self.records if r.outcome in MOVED]

    @property
    def refused(self) -> list[ReplayRecord]:
        return [r for r in self.records if r.outcome == REFUSED]


def operator_name() -> str:
    """Who replays: CHOREO_OPERATOR when set (a shared account's real person), else the OS user."""
    name = os.environ.get("CHOREO_OPERATOR", "").strip()
    if not name:
        try:
            name = getpass.getuser()
        except Exception:  # no user name for this uid (a container)
            name = f"uid {os.getuid()}"
    return name[:128]


def _selector(ids: list[str] | None):
    wanted = set(ids or ())
    return (lambda v: v.event_id in wanted) if wanted else None


def processed(settings: Settings, domain: str, event_ids: list[str]) -> dict[str, bool] | None:
    """Which of `event_ids` the domain's consumer has applied (its inbox), or None if unknown."""
    if domain == UNROUTED:  # no consumer of its own: nothing to ask
        return None
    if not event_ids:
        return {}
    try:
        with engine_for(settings, domain).connect() as conn:
            rows = (
                conn.execute(
                    select(col(Inbox.event_id)).where(
                        col(Inbox.consumer) == domain, col(Inbox.event_id).in_(event_ids)
                    )
                )
                .scalars()
                .all()
            )
    except Exception as exc:  # the domain's database away: say so, never guess
        log.warning("could not read %s's inbox: %r", domain, exc)
        return None
    found = set(rows)
    return {e: e in found for e in event_ids}


def orders_known(settings: Settings, letters: list[DeadLetterView]) -> dict[str, bool]:
    """Per order id the dead letters name: whether this stack's order database knows it. Empty
    when it cannot be read (then nothing is marked: never guess)."""
    order_ids = sorted({v.order_id for v in letters if v.order_id})
    if not order_ids:
        return {}
    try:
        found = order_states(settings, order_ids)
    except Exception as exc:  # no order database yet, or its server away
        log.warning("could not read the order database: %r", exc)
        return {}
    return {o: o in found for o in order_ids}


def _replayed_before(settings: Settings, domain: str, event_ids: list[str]) -> dict[str, int]:
    try:
        with Session(engine_for(settings, "operator")) as s:  # no table yet: nothing replayed
            rows = (
                s.execute(
                    select(col(ReplayRecord.event_id)).where(
                        col(ReplayRecord.domain) == domain,
                        col(ReplayRecord.event_id).in_(event_ids),
                        col(ReplayRecord.outcome).in_(MOVED),
                    )
                )
                .scalars()
                .all()
            )
    except Exception as exc:
        log.warning("could not read the replay records: %r", exc)
        return {}
    counts: dict[str, int] = {}
    for event_id in rows:
        counts[event_id] = counts.get(event_id, 0) + 1
    return counts


def plan(
    settings: Settings,
    domain: str,
    ids: list[str] | None = None,
    limit: int = 100,
    force: bool = False,
) -> list[Candidate]:
    """What `execute` with the same arguments would do now (nothing is consumed or moved): each
    dead letter it would move, or refuse (outside the dedup window, not forced)."""
    with BrokerAdmin(settings) as admin:
        letters = admin.peek(domain, MAX_LIMIT if ids else limit)
    choose = _selector(ids)
    letters = [v for v in letters if choose is None or choose(v)][:limit]
    event_ids = [v.event_id for v in letters if v.event_id]
    known = processed(settings, domain, event_ids)
    before = _replayed_before(settings, domain, event_ids) if event_ids else {}
    orders = orders_known(settings, letters)
    now = time.time()
    return [
        Candidate(
            v,
            None if known is None else known.get(v.event_id, False),
            before.get(v.event_id, 0),
            orders.get(v.order_id) if v.order_id else None,
            Window.of(settings, v, now),
            force,
            refusal(settings),
        )
        for v in letters
    ]


def execute(
    settings: Settings,
    domain: str,
    ids: list[str] | None = None,
    limit: int = 100,
    batch: int = 50,
    by: str | None = None,
    force: bool = False,
) -> Run:
    """Replay: each batch's records committed, then its dead letters moved back. A dead letter
    outside the dedup window stays where it is, recorded as refused, unless `force` (then a copy
    with the operator's mark is published and confirmed before the dead letter is acked:
    BrokerAdmin.replay)."""
    run = Run(run_id=str(uuid.uuid4()), by=by or operator_name(), domain=domain)
    engine = upgraded(settings, "operator")  # before anything moves: a record can be written
    now = time.time()
    chosen = _selector(ids)
    refused: dict[int, DeadLetterView] = {}

    def select(view: DeadLetterView) -> bool:
        if chosen is not None and not chosen(view):
            return False
        c = Candidate(view, None, window=Window.of(settings, view, now), force=force)
        if c.refused:
            refused[view.delivery_tag] = view
        return not c.refused

    def mark(view: DeadLetterView) -> dict | None:
        if not Window.of(settings, view, now).outside:
            return None
        return {FORCED_HEADER: f"{run.by} (replay run {run.run_id})"[:255]}

    def record(results: list[Replayed]) -> None:
        event_ids = [r.view.event_id for r in results if r.view.event_id]
        known = processed(settings, domain, event_ids) if event_ids else {}
        now = utcnow()
        rows = [
            ReplayRecord(
                run_id=run.run_id,
                replayed_at=now,
                by=run.by,
                domain=domain,
                event_id=r.view.event_id[:64],
                message_id=(r.view.message_id or None),
                type=r.view.type[:64],
                order_id=(r.view.order_id or None),
                reason=r.view.reason,
                already_processed=None if known is None else known.get(r.view.event_id, False),
                outcome=FORCED if r.outcome == MOVED_FORCED else r.outcome,
            )
            for r in results
        ]
        with Session(engine, expire_on_commit=False) as s:  # durable (fsync'd) before the acks
            s.add_all(rows)
            s.commit()
        run.records += rows

    with BrokerAdmin(settings) as admin:
        admin.replay(
            domain,
            limit=limit,
            select=select,
            batch=batch,
            before_ack=record,
            force=mark if force else None,
        )
    if refused:
        record([Replayed(v, REFUSED) for v in refused.values()])
    log.info("replay run %s by %s: %d of %s moved", run.run_id, run.by, len(run.moved), domain)
    prune_records(settings, engine)
    return run


def prune_records(settings: Settings, engine: Engine) -> None:
    """Remove replay records older than `retention_replays`: the run that writes records keeps
    their table bounded, with or without a scheduled `choreo retention run`. The replay itself is
    done and recorded by now: a database error here is reported, not raised over it."""
    try:
        swept = sweep_service(settings, "operator", engine)
    except SQLAlchemyError as exc:
        log.warning("could not prune old replay records: %r", exc)
        return
    if removed := sum(s.count for s in swept):
        log.info("removed %d replay record(s) older than the retention window", removed)


def history(
    settings: Settings, domain: str | None = None, limit: int = 50, event_id: str | None = None
) -> list[ReplayRecord]:
    """The newest replay records first."""
    with Session(upgraded(settings, "operator")) as s:
        q = select(ReplayRecord)
        if domain:
            q = q.where(col(ReplayRecord.domain) == domain)
        if event_id:
            q = q.where(col(ReplayRecord.event_id) == event_id)
        rows = list(s.execute(q.order_by(col(ReplayRecord.id).desc()).limit(limit)).scalars().all())
        s.expunge_all()
        return rows


def record_dict(r: ReplayRecord) -> dict:
    return {
        "run_id": r.run_id,
        "replayed_at": r.replayed_at.isoformat(),
        "by": r.by,
        "domain": r.domain,
        "event_id": r.event_id,
        "message_id": r.message_id,
        "type": r.type,
        "order_id": r.order_id,
        "reason": r.reason,
        "already_processed": r.already_processed,
        "outcome": r.outcome,
    }
