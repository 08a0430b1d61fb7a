"""Database engines (one per service per process), database creation, and prebuilt Core
statements (`Rows`). Tables come from the migrations (choreo.infra.schema)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic_core import PydanticUndefined
from sqlalchemy import bindparam, event, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlmodel import Session, create_engine

from config.settings import Settings
from models.tables import table_of

_engines: dict[tuple[int, str], Engine] = {}  # (pid, database url) -> engine
_lock = threading.Lock()


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" below issue BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk (the WAL fsynced) before it returns. choreo acks its input and
        # publishes its outputs on the strength of that commit; NORMAL could lose it on power loss.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # pragma: no cover
        # IMMEDIATE takes the write lock up front: two writers never deadlock upgrading a read.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def non_durable(engine: Engine) -> Iterator[Connection]:
    """A transaction whose commit skips the flush to disk: a process crash cannot lose it, a
    power loss can. Only for bookkeeping whose loss a re-run repairs (the outbox's mark-sent:
    lost, it costs one more publish of an event that consumers absorb as a duplicate)."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            # No transaction yet: SQLite refuses the pragma inside one.
            raw = conn.connection.driver_connection
            assert raw is not None  # an open connection always has its driver's connection
            raw.execute("PRAGMA synchronous=NORMAL")
            try:
                with conn.begin():
                    yield conn
            finally:
                raw.execute("PRAGMA synchronous=FULL")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn


def reachable(engine: Engine) -> bool:
    """Whether the database answers a trivial query now (a readiness probe; never raises)."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


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
                exists = text("SELECT 1 FROM pg_database WHERE datname=:n")
                if not conn.execute(exists, {"n": u.database}).scalar():
                    try:
                        conn.execute(text(f'CREATE DATABASE "{u.database}"'))
                    except (IntegrityError, ProgrammingError):
                        # Another process (an upgrader, a worker) created it meanwhile.
                        if not conn.execute(exists, {"n": u.database}).scalar():
                            raise
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
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            if url.startswith("sqlite"):
                engine = create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 30}
                )
                _sqlite_pragmas(engine)
            else:
                # synchronous_commit=on whatever the server's default: a commit is flushed to the
                # WAL on disk before it returns (see the SQLite pragmas above for why).
                engine = create_engine(
                    url,
                    pool_size=4,
                    max_overflow=4,
                    pool_pre_ping=True,
                    connect_args={"options": "-c synchronous_commit=on"},
                )
            _engines[key] = engine
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


def connection_of(db: Session | Connection) -> Connection:
    """The connection under a session (its transaction) or the connection itself: the hot
    path's Core statements run on it, inside whatever transaction the caller opened."""
    return db.connection() if isinstance(db, Session) else db


class Rows:
    """Primary-key reads and inserts for one table as prebuilt Core statements.

    The handlers' hot path: an ORM `session.get` and `session.add` cost several times the SQL
    they run (identity map, flush, model validation). Python-side defaults of the model
    (timestamps) are filled in here, as the ORM would.
    """

    def __init__(self, model) -> None:
        t = table_of(model)
        self.pk = [c.name for c in t.primary_key.columns]
        self._get = select(t).where(*(t.c[n] == bindparam(f"pk_{n}") for n in self.pk))
        self._has = select(t.c[self.pk[0]]).where(
            *(t.c[n] == bindparam(f"pk_{n}") for n in self.pk)
        )
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
