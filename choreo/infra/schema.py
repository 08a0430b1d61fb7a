"""Each service's database schema under Alembic: upgrade, status, the start-up check, and the
comparison of models with migrations (docs/operating/migrations.md).

One script location (choreo/infra/migrations) holds one version branch per service
(`versions/<service>/`, branch label = the service): each database has its own table set and
records its own revision in its `alembic_version`. The branch's first revision is the baseline,
release 0.1's schema exactly. Alembic runs here programmatically on the engine of
`choreo.infra.db.engine_for`; no alembic.ini, nothing read relative to the working directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zlib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from choreo.infra.db import engine_for, ensure_database
from config.settings import Settings
from models.tables import table_of, tables_of

SCRIPTS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"


class SchemaError(RuntimeError):
    """A database this code cannot (or must not) run on: one line saying what to do."""


@dataclass(frozen=True)
class Status:
    service: str
    url: str  # password hidden
    current: str | None
    head: str
    state: str  # up-to-date | behind | empty | unversioned | unknown | unreachable
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "up-to-date"

    def as_dict(self) -> dict:
        return asdict(self)


def config(service: str, connection: Connection | None = None) -> Config:
    """Alembic's configuration for one service, built in code: the script location is this
    package's, whatever the working directory, and the service's own branch is the only version
    location (Alembic autogenerates only against a database at every head it sees)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(versions_of(service)))
    cfg.attributes["connection"] = connection
    cfg.attributes["service"] = service
    return cfg


def versions_of(service: str) -> Path:
    return SCRIPTS / "versions" / service


@cache
def scripts(service: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(config(service))


def head_of(service: str) -> str:
    head = scripts(service).get_revision(f"{service}@head")
    assert head is not None, f"no migration for {service}"
    return head.revision


def baseline_of(service: str) -> str:
    """The first revision of a service's branch: release 0.1's schema."""
    revisions = list(scripts(service).iterate_revisions(f"{service}@head", "base"))
    return revisions[-1].revision


def target_metadata(service: str) -> MetaData:
    """The models of one service's database, alone (what its migrations must build)."""
    metadata = MetaData()
    for model in tables_of(service):
        table_of(model).to_metadata(metadata)
    return metadata


def hidden(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# --- where a database stands ---------------------------------------------------------------


def current_revision(conn: Connection) -> tuple[str | None, bool]:
    """(the recorded revision or None, whether the database holds any table of its own)."""
    names = set(inspect(conn).get_table_names())
    if VERSION_TABLE not in names:
        return None, bool(names)
    version = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return (version[0] if version else None), bool(names - {VERSION_TABLE})


def status(settings: Settings, service: str) -> Status:
    url = settings.database_url(service)
    head = head_of(service)
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and not Path(u.database).exists():
        return Status(service, hidden(url), None, head, "empty", "no file yet")
    try:
        with engine_for(settings, service).connect() as conn:
            current, has_tables = current_revision(conn)
    except SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if re.search(r'database "[^"]+" does not exist', first):  # PostgreSQL: none made yet
            return Status(service, hidden(url), None, head, "empty", "no database yet")
        return Status(service, hidden(url), None, head, "unreachable", first)
    if current is None:
        state = "unversioned" if has_tables else "empty"
    elif current == head:
        state = "up-to-date"
    elif current in _known(service):
        state = "behind"
    else:
        state = "unknown"  # a revision no migration here names: a newer choreo wrote it
    return Status(service, hidden(url), current, head, state)


def _known(service: str) -> set[str]:
    return {r.revision for r in scripts(service).iterate_revisions(f"{service}@head", "base")}


def require_current(settings: Settings, service: str) -> None:
    """What a worker does at start-up: one query, and a refusal (never a migration) when its
    database is not at this code's head. Upgrading is `choreo db upgrade`'s job (run by
    `choreo up` and the compose set-up), done once, not raced by every worker."""
    head = head_of(service)
    try:
        with engine_for(settings, service).connect() as conn:
            found = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    except SQLAlchemyError:
        found = None  # no version table (or no database): let status say which
    if found == [head]:
        return
    s = status(settings, service)
    where = {
        "empty": "is empty",
        "unversioned": "has tables but no recorded revision",
        "unreachable": f"cannot be reached ({s.detail})",
    }.get(s.state, f"is at revision {s.current}")
    raise SchemaError(
        f"database {service} ({s.url}) {where}, this code needs {head}: run `choreo db upgrade`"
    )


# --- upgrading -----------------------------------------------------------------------------


def upgrade(settings: Settings, service: str) -> tuple[str | None, str]:
    """Bring a service's database to this code's head; returns (revision before, after).

    A database an earlier choreo made (tables, no alembic_version) is stamped with the baseline
    first, only if its tables are the baseline's (else SchemaError naming what differs). On
    PostgreSQL the whole of it runs under a transaction-scoped advisory lock, so concurrent
    upgraders take turns and the later one finds nothing left to do; on SQLite the write lock
    taken by BEGIN IMMEDIATE (choreo.infra.db) does the same.
    """
    ensure_database(settings.database_url(service))
    engine = engine_for(settings, service)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(service)})
        before, has_tables = current_revision(conn)
        if before == head_of(service):
            return before, before
        if before is not None and before not in _known(service):
            raise SchemaError(
                f"database {service} ({hidden(settings.database_url(service))}) is at revision "
                f"{before}, which this code does not know (a newer choreo wrote it): run that "
                f"choreo's `choreo db upgrade`, or this code on a database it made"
            )
        cfg = config(service, conn)
        if before is None and has_tables:
            differences = baseline_differences(conn, service)
            if differences:
                raise SchemaError(
                    f"database {service} ({hidden(settings.database_url(service))}) has no "
                    f"recorded revision and its tables are not release 0.1's, so it cannot be "
                    f"stamped: {'; '.join(differences)}"
                )
            command.stamp(cfg, baseline_of(service))
        command.upgrade(cfg, f"{service}@head")
        after, _ = current_revision(conn)
    assert after is not None
    return before, after


def upgraded(settings: Settings, service: str) -> Engine:
    """The service's engine, its database brought to this code's head first."""
    upgrade(settings, service)
    return engine_for(settings, service)


def lock_key(service: str) -> int:
    """A stable 63-bit advisory lock key per service database."""
    return zlib.crc32(f"choreo-schema:{service}".encode()) & 0x7FFFFFFF


# --- comparing -----------------------------------------------------------------------------


def shape(conn: Connection) -> dict[str, dict]:
    """What a schema is made of, across dialects: tables, columns (nullable), primary keys,
    unique column sets and indexes (by name). Types differ by dialect and are left out."""
    insp = inspect(conn)
    out: dict[str, dict] = {}
    for table in insp.get_table_names():
        if table == VERSION_TABLE:
            continue
        found = insp.get_indexes(table)
        indexes = {
            i["name"]: tuple(map(str, i["column_names"]))
            for i in found
            if "duplicates_constraint" not in i and not i.get("unique")
        }
        unique = {tuple(map(str, u["column_names"])) for u in insp.get_unique_constraints(table)}
        unique |= {tuple(map(str, i["column_names"])) for i in found if i.get("unique")}
        out[table] = {
            "columns": {c["name"]: bool(c["nullable"]) for c in insp.get_columns(table)},
            "primary key": tuple(insp.get_pk_constraint(table)["constrained_columns"]),
            "unique": sorted(unique),
            "indexes": indexes,
        }
    return out


def baseline_shape(service: str) -> dict[str, dict]:
    """The baseline revision's schema, built in a scratch in-memory SQLite database."""
    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as conn:
            command.upgrade(config(service, conn), baseline_of(service))
            return shape(conn)
    finally:
        scratch.dispose()


def baseline_differences(conn: Connection, service: str) -> list[str]:
    """How this database's tables differ from the baseline's ([] when they match)."""
    want, have = baseline_shape(service), shape(conn)
    out = [f"table {t} missing" for t in sorted(set(want) - set(have))]
    out += [f"table {t} not in the baseline" for t in sorted(set(have) - set(want))]
    for table in sorted(set(want) & set(have)):
        for part in ("columns", "primary key", "unique", "indexes"):
            if want[table][part] != have[table][part]:
                out.append(
                    f"{table} {part}: expected {_show(want[table][part])}, "
                    f"found {_show(have[table][part])}"
                )
    return out


def _show(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "none"
    return str(value)


def model_differences(engine: Engine, service: str) -> list:
    """What autogenerate would change to make this database (at head) match the models: the
    `alembic check` of one service ([] when models and migrations agree)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "target_metadata": target_metadata(service)}
        )
        return compare_metadata(context, target_metadata(service))


def scratch_at_head(service: str) -> Engine:
    """A scratch in-memory SQLite database upgraded to the service's head (one connection)."""
    from sqlalchemy.pool import StaticPool

    engine = create_engine("sqlite://", poolclass=StaticPool)
    if has_branch(service):  # a new service's branch starts from nothing
        with engine.begin() as conn:
            command.upgrade(config(service, conn), f"{service}@head")
    return engine


def has_branch(service: str) -> bool:
    """Whether the service has revisions yet (a new domain's first comes from `revision`)."""
    return any(versions_of(service).glob(f"{service}_*.py"))


def next_revision_id(service: str) -> str:
    """`<service>_<NNNN>`: the branch's next number."""
    numbers = [
        int(m.group(1))
        for r in _known(service)
        if (m := re.fullmatch(rf"{re.escape(service)}_(\d+)", r)) is not None
    ]
    return f"{service}_{max(numbers, default=0) + 1:04d}"


def revision(service: str, message: str) -> str | None:
    """Autogenerate the service's next revision from the models (against a scratch database at
    its head); returns the new file's path, or None when the models add nothing. A service with
    no branch yet (a new domain) gets its first revision, labelled with its name."""
    new = not has_branch(service)
    engine = scratch_at_head(service)
    try:
        if not model_differences(engine, service):
            return None
        versions_of(service).mkdir(parents=True, exist_ok=True)
        scripts.cache_clear()
        with engine.begin() as conn:
            script = command.revision(
                config(service, conn),
                message=message,
                autogenerate=True,
                head="base" if new else f"{service}@head",
                branch_label=service if new else None,
                rev_id=f"{service}_0001" if new else next_revision_id(service),
                version_path=str(versions_of(service)),
            )
    finally:
        engine.dispose()
    assert script is not None and not isinstance(script, list)
    # As `make fmt` would (ruff is a development tool: absent from a production install).
    for args in (["check", "--fix", "-q", "--select", "I,F401"], ["format", "-q"]):
        subprocess.run([sys.executable, "-m", "ruff", *args, script.path], check=False)
    return script.path
