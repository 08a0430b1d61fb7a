"""Database engines (one per service per process) and the unit of work that commits state + outbox."""
from __future__ import annotations

import os
import threading
from datetime import datetime, timezone

from sqlalchemy import bindparam, event, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, create_engine

from config.settings import Settings
from models.envelope import Envelope, derived_id, make_envelope
from models.tables import TABLES, Inbox, Outbox

_engines: dict[tuple[int, str], Engine] = {}  # (pid, database url) -> engine
_lock = threading.Lock()


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" below issue BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # pragma: no cover
        # IMMEDIATE takes the write lock up front: two writers never deadlock upgrading a read.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database named in `url` if it does not exist (SQLite: the folder)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database:
            os.makedirs(os.path.dirname(os.path.abspath(u.database)), exist_ok=True)
        return
    if u.get_backend_name() == "postgresql":
        admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname=:n"), {"n": u.database}).scalar()
                if not exists:
                    conn.execute(text(f'CREATE DATABASE "{u.database}"'))
        finally:
            admin.dispose()


def engine_for(settings: Settings, service: str) -> Engine:
    """The engine of `service` for this process (rebuilt after fork: pools are not fork-safe)."""
    url = settings.database_url(service)
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
                _sqlite_pragmas(engine)
            else:
                engine = create_engine(url, pool_size=4, max_overflow=4, pool_pre_ping=True)
            _engines[key] = engine
        return engine


def create_tables(settings: Settings, service: str) -> Engine:
    ensure_database(settings.database_url(service))
    engine = engine_for(settings, service)
    SQLModel.metadata.create_all(engine, tables=[t.__table__ for t in TABLES[service]])
    return engine


def dispose_all() -> None:
    """Close this process's pools; forget inherited ones without touching their connections
    (closing a PostgreSQL connection inherited from the parent would close the parent's)."""
    with _lock:
        for (pid, _), engine in list(_engines.items()):
            engine.dispose(close=pid == os.getpid())
        _engines.clear()


def dispose_engines(under: str) -> int:
    """Close and forget this process's engines whose database URL contains `under` (a data
    folder or a database prefix going away with a sandbox); returns how many."""
    with _lock:
        keys = [k for k in _engines if under in k[1]]
        for key in keys:
            _engines.pop(key).dispose(close=key[0] == os.getpid())
        return len(keys)


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at fork time


os.register_at_fork(after_in_child=_reset_after_fork)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def connection_of(db: Session | Connection) -> Connection:
    """The connection under a session (its transaction) or the connection itself: the hot
    path's Core statements run on it, inside whatever transaction the caller opened."""
    return db.connection() if isinstance(db, Session) else db


# Statements on every message's path, built once (building one costs more than running it).
_INBOX, _OUTBOX = Inbox.__table__, Outbox.__table__
_INBOX_HAS = select(_INBOX.c.event_id).where(_INBOX.c.consumer == bindparam("c"), _INBOX.c.event_id == bindparam("e"))
_INBOX_ADD = _INBOX.insert()
_OUTBOX_ADD = _OUTBOX.insert()
_OUTBOX_SENT = (_OUTBOX.update().where(_OUTBOX.c.event_id.in_(bindparam("ids", expanding=True)))
                .values(sent_at=bindparam("sent_at")))


class Rows:
    """Primary-key reads and inserts for one table as prebuilt Core statements.

    The handlers' hot path: an ORM `session.get` and `session.add` cost several times the SQL
    they run (identity map, flush, model validation). Python-side defaults of the model
    (timestamps) are filled in here, as the ORM would.
    """

    def __init__(self, model) -> None:
        from pydantic_core import PydanticUndefined

        t = model.__table__
        self.pk = [c.name for c in t.primary_key.columns]
        self._get = select(t).where(*(t.c[n] == bindparam(f"pk_{n}") for n in self.pk))
        self._has = select(t.c[self.pk[0]]).where(*(t.c[n] == bindparam(f"pk_{n}") for n in self.pk))
        self._insert = t.insert()
        self._defaults: dict = {}
        for name, field in model.model_fields.items():
            if name not in t.c or (t.c[name].primary_key and field.default is None):
                continue  # not a column, or generated by the database
            if field.default_factory is not None:
                self._defaults[name] = field.default_factory
            elif field.default is not PydanticUndefined:
                self._defaults[name] = (lambda v: lambda: v)(field.default)

    def _key(self, pk: tuple) -> dict:
        return {f"pk_{n}": v for n, v in zip(self.pk, pk, strict=True)}

    def get(self, conn, *pk):
        """The row (attribute access by column name), or None."""
        return conn.execute(self._get, self._key(pk)).first()

    def exists(self, conn, *pk) -> bool:
        return conn.execute(self._has, self._key(pk)).first() is not None

    def add(self, conn, **values) -> None:
        for name, make in self._defaults.items():
            if name not in values:
                values[name] = make()
        conn.execute(self._insert, values)


class UnitOfWork:
    """One transaction: the state change, the inbox mark and the outgoing events commit together.

    Nothing is published from inside: `commit()` returns the outbox rows to publish afterwards.
    """

    def __init__(self, engine: Engine, source: str, cause: Envelope | None = None) -> None:
        self.engine = engine
        self.source = source
        self.cause = cause
        self.session: Session | None = None
        self.pending: list[Envelope] = []
        self.processed: dict | None = None
        self.committed = False

    def __enter__(self) -> "UnitOfWork":
        self.session = Session(self.engine, expire_on_commit=False)
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.session.rollback()
        self.session.close()

    # The inbox, the outbox and mark-sent are on every message's path: plain Core statements on
    # the session's connection (same transaction), not ORM objects; the profile showed the ORM's
    # identity map and flush machinery costing more than the SQL itself.

    @property
    def conn(self) -> Connection:
        """The transaction's connection, for Core statements (`Rows`) beside the ORM session."""
        return connection_of(self.session)

    def already_processed(self, consumer: str, event_id: str) -> bool:
        return self.conn.execute(_INBOX_HAS, {"c": consumer, "e": event_id}).first() is not None

    def mark_processed(self, consumer: str, envelope: Envelope) -> None:
        self.processed = {"consumer": consumer, "event_id": envelope.event_id, "type": envelope.type,
                          "order_id": envelope.order_id, "processed_at": utcnow()}

    def emit(self, type: str, payload, order_id: str | None = None) -> Envelope:
        """Stage an event for publication; its id is derived from the cause, so a re-run repeats it."""
        order_id = order_id or self.cause.order_id
        seq = str(len(self.pending))
        event_id = derived_id(self.source, self.cause.event_id, type, seq) if self.cause else None
        envelope = make_envelope(type, order_id, payload, source=self.source, cause=self.cause, event_id=event_id)
        self.pending.append(envelope)
        return envelope

    def commit(self) -> list[Envelope]:
        """Commit state, inbox mark and outbox rows together; returns the envelopes to publish."""
        conn = self.conn
        if self.processed is not None:
            conn.execute(_INBOX_ADD, self.processed)
        if self.pending:
            now = utcnow()
            conn.execute(_OUTBOX_ADD, [
                {"event_id": e.event_id, "type": e.type, "order_id": e.order_id, "body": e.model_dump_json(),
                 "created_at": now, "sent_at": None} for e in self.pending])
        self.session.commit()
        self.committed = True
        return list(self.pending)


def unsent_outbox(engine: Engine, older_than: float, limit: int = 500) -> list[Envelope]:
    """Outbox rows nobody marked sent within `older_than` seconds, oldest first."""
    from datetime import timedelta
    cutoff = utcnow() - timedelta(seconds=older_than)
    outbox = Outbox.__table__
    with engine.connect() as conn:
        bodies = conn.execute(select(outbox.c.body).where(outbox.c.sent_at.is_(None), outbox.c.created_at <= cutoff)
                              .order_by(outbox.c.id).limit(limit)).scalars().all()
        conn.rollback()
    return [Envelope.model_validate_json(b) for b in bodies]


def mark_sent(engine: Engine, event_ids: list[str]) -> None:
    """Record that the broker confirmed these events (by event id, unique in the outbox)."""
    if not event_ids:
        return
    with engine.begin() as conn:
        conn.execute(_OUTBOX_SENT, {"ids": list(event_ids), "sent_at": utcnow()})


__all__ = ["UnitOfWork", "IntegrityError", "engine_for", "create_tables", "unsent_outbox", "mark_sent"]
