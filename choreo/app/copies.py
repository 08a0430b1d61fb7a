"""The copies a service makes of its deliveries (retry rungs, dead letters), and the proof of who
sent each original.

The broker vouches for one thing about a delivery: its publisher (the AMQP user_id). A copy a
service publishes of a delivery it could not finish carries that service's own user_id, so the
original sender it names (`x-choreo-sender`) is only a claim, and anyone holding the service's
broker password may write to its rungs and its dead-letter key. The claim is believed only where
the service's own database holds the record it wrote in the transaction that decided the copy:
the delivery's id and a digest of the claimed sender, the message's name and its arguments. A copy
with no such record is refused like any fact from a sender that does not own it (a body changed on
the way, another sender named in the header: no record). Which rung, or whether the copy came back
from a rung or a replayed dead letter, does not matter: the record proves who sent the original.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from choreo.infra.db import Rows
from models.tables import CopyRecord, table_of

RETRY = "retry"
DEAD_LETTER = "dead_letter"
COPIES = Rows(CopyRecord)
_T = table_of(CopyRecord)
_AMONG = select(_T.c.event_id, _T.c.digest).where(
    _T.c.event_id.in_(bindparam("ids", expanding=True))
)


@dataclass(frozen=True)
class Copy:
    """A copy, as its record keys it."""

    event_id: str  # the delivery's task id (an event's id)
    digest: str


def digest(sender: str, name: str, args: Any, kwargs: Any) -> str:
    """sha256 over what the copy's receiver reads from it: the same for the copy as for the
    original (both come from JSON, and this is their canonical JSON)."""
    doc = json.dumps(
        [sender, name, args, kwargs],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=repr,
    )
    return hashlib.sha256(doc.encode("utf-8", "surrogatepass")).hexdigest()


def copy_of(event_id: str, sender: str, name: str, args: Any, kwargs: Any) -> Copy:
    return Copy(event_id[:64], digest(sender, name, args, kwargs))


@dataclass(frozen=True)
class Made:
    """A copy about to be published: its key, the sender it names, what kind and which rung."""

    copy: Copy
    sender: str
    kind: str  # RETRY | DEAD_LETTER
    attempt: int  # the rung a retry copy waits on; for a dead letter, the attempts it had


def record(conn: Connection, made: Made) -> None:
    """Record a copy, once (a redelivered original decides the same copy again; the first
    record's kind and rung stay). Inside the transaction that decides the copy; a concurrent
    worker's identical record raises IntegrityError (uow.Batch.record_copy takes a savepoint)."""
    c = made.copy
    if not COPIES.exists(conn, c.event_id, c.digest):
        COPIES.add(
            conn,
            event_id=c.event_id,
            digest=c.digest,
            sender=made.sender,
            kind=made.kind,
            attempt=made.attempt,
        )


def record_now(engine: Engine, made: list[Made]) -> None:
    """Record copies in a transaction of their own, durable before it returns (the batch's own
    transaction failed: its copies still need their records before they are published)."""
    with engine.begin() as conn:
        for m in made:
            try:
                with conn.begin_nested():
                    record(conn, m)
            except IntegrityError:
                pass  # the same record, committed by another worker meanwhile


def proven(engine: Engine, copies: Iterable[Copy]) -> set[Copy]:
    """The copies among these that this service recorded (one read, committed records only)."""
    wanted = set(copies)
    if not wanted:
        return set()
    with engine.connect() as conn:
        rows = conn.execute(_AMONG, {"ids": sorted({c.event_id for c in wanted})}).all()
        conn.rollback()
    return wanted & {Copy(*row) for row in rows}
