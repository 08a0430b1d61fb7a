"""Schema migrations on a real database (SQLite, and PostgreSQL in `make test`'s second pass):
the migrations build exactly the models (`alembic check`), release 0.1's databases upgrade
through `choreo db upgrade`, one whose tables are not release 0.1's is refused, a database behind
this code's head is refused by a starting worker and reported by `choreo db status`, and
concurrent upgraders take turns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from config.settings import SERVICES
from tests.helpers import fresh_databases, load_release_0_1

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh(settings, tmp_path, monkeypatch):
    """Settings on databases of their own, and this shell's environment pointed at them (for
    the CLI)."""
    from choreo.infra import db
    from config.settings import get_settings

    s = fresh_databases(settings, tmp_path, "mig")
    monkeypatch.setenv("CHOREO_DATA_DIR", str(s.data_dir))
    monkeypatch.setenv("CHOREO_DATABASE_PREFIX", s.database_prefix)
    get_settings.cache_clear()
    yield s
    get_settings.cache_clear()
    db.dispose_engines(str(s.data_dir))
    db.dispose_engines(f"/{s.database_prefix}_")


def choreo(*args: str):
    from choreo.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_the_migrations_build_exactly_the_models(fresh):
    """`alembic check` on this dialect: every service's empty database upgraded to head, then
    compared with its models by autogenerate: nothing to add, drop or alter."""
    from choreo.infra import schema
    from choreo.infra.db import engine_for

    for service in SERVICES:
        assert schema.upgrade(fresh, service) == (None, schema.head_of(service))
        assert schema.model_differences(engine_for(fresh, service), service) == [], service
    result = choreo("db", "check")  # the same on a scratch SQLite database, as `make check` has
    assert result.exit_code == 0, result.output


def test_release_0_1_databases_are_stamped_and_upgraded_with_their_data(fresh):
    from sqlalchemy import func, select

    from choreo.infra import schema
    from choreo.infra.db import engine_for
    from consumers.order.tables import OrderDeadline
    from models.tables import Outbox, table_of

    load_release_0_1(fresh)
    before = choreo("db", "status", "--json")
    assert before.exit_code == 1
    assert {d["state"] for d in json.loads(before.output)["databases"]} == {"unversioned"}

    result = choreo("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"order: empty -> {schema.head_of('order')}" in result.output  # stamped, then upgraded
    after = choreo("db", "status", "--json")
    assert after.exit_code == 0, after.output
    databases = json.loads(after.output)["databases"]
    assert [(d["service"], d["state"]) for d in databases] == [(s, "up-to-date") for s in SERVICES]
    assert all("postgres:postgres@" not in d["url"] for d in databases)  # password hidden
    with engine_for(fresh, "order").connect() as conn:  # the rows are still there
        assert conn.execute(select(func.count()).select_from(table_of(OrderDeadline))).scalar() == 3
    with engine_for(fresh, "inventory").connect() as conn:
        unsent = table_of(Outbox).c.sent_at.is_(None)
        assert conn.execute(select(func.count()).where(unsent)).scalar() == 1
    again = choreo("db", "upgrade", "--service", "order")
    assert again.exit_code == 0 and "order: up to date" in again.output


def test_tables_that_are_not_release_0_1_are_refused_and_left_alone(fresh):
    from sqlalchemy import inspect, text

    from choreo.infra.db import engine_for

    load_release_0_1(fresh, ["shipment"])
    with engine_for(fresh, "shipment").begin() as conn:
        conn.execute(text("DROP INDEX ix_inbox_order_id"))
        conn.execute(text("ALTER TABLE shipments ADD COLUMN carrier VARCHAR(32)"))
    result = choreo("db", "upgrade", "--service", "shipment")
    assert result.exit_code == 1
    assert "no recorded revision" in result.output
    assert "shipments columns" in result.output and "carrier" in result.output
    assert "inbox indexes" in result.output
    with engine_for(fresh, "shipment").connect() as conn:
        assert "alembic_version" not in inspect(conn).get_table_names()  # nothing stamped


SECOND = '''"""Test revision: a column and an index (what the next real revision looks like)."""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("order_view") as batch_op:
        batch_op.add_column(sa.Column("note", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_order_view_note", ["note"])


def downgrade() -> None:
    with op.batch_alter_table("order_view") as batch_op:
        batch_op.drop_index("ix_order_view_note")
        batch_op.drop_column("note")
'''


@pytest.fixture
def second_revision(tmp_path, monkeypatch):
    """This code as if it carried a second order revision (a copy of the migrations plus one)."""
    from choreo.infra import schema

    scripts = tmp_path / "migrations"
    shutil.copytree(schema.SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    head = schema.head_of("order")
    following = f"order_{int(head.rsplit('_', 1)[1]) + 1:04d}"
    text = SECOND.replace("{revision}", following).replace("{down_revision}", head)
    (scripts / "versions" / "order" / f"{following}_note.py").write_text(text)
    monkeypatch.setattr(schema, "SCRIPTS", scripts)
    schema.scripts.cache_clear()
    yield following
    schema.scripts.cache_clear()


def test_a_database_behind_is_refused_by_a_worker_and_reported_then_upgraded(
    fresh, second_revision
):
    from sqlalchemy import inspect

    from choreo.app.bootstrap import prepare
    from choreo.infra import schema
    from choreo.infra.db import engine_for

    _upgrade_to_baseline(fresh, "order")  # as the code before the second revision left it
    with pytest.raises(schema.SchemaError) as refused:
        prepare(fresh, ["order"], migrate=False)  # what `choreo worker order` does first
    assert str(refused.value) == (
        f"database order ({schema.hidden(fresh.database_url('order'))}) is at revision "
        f"order_0001, this code needs {second_revision}: run `choreo db upgrade`"
    )
    status = choreo("db", "status", "--service", "order", "--json")
    assert status.exit_code == 1
    assert json.loads(status.output)["databases"][0]["state"] == "behind"

    result = choreo("db", "upgrade", "--service", "order")  # batch mode on SQLite: the ALTER works
    assert result.exit_code == 0 and f"order: order_0001 -> {second_revision}" in result.output
    prepare(fresh, ["order"], migrate=False)
    with engine_for(fresh, "order").connect() as conn:
        assert "note" in {c["name"] for c in inspect(conn).get_columns("order_view")}


def _upgrade_to_baseline(settings, service):
    from alembic import command

    from choreo.infra import schema
    from choreo.infra.db import engine_for, ensure_database

    ensure_database(settings.database_url(service))
    with engine_for(settings, service).begin() as conn:
        command.upgrade(schema.config(service, conn), schema.baseline_of(service))


def test_a_worker_refuses_to_start_on_a_database_it_does_not_match(fresh):
    """The real `choreo worker`, on release 0.1's database not yet upgraded: one line, exit 2,
    and the database untouched."""
    from choreo.infra import schema

    load_release_0_1(fresh, ["shipment"])
    env = {
        **os.environ,
        "CHOREO_DATA_DIR": str(fresh.data_dir),
        "CHOREO_DATABASE_PREFIX": fresh.database_prefix,
    }
    done = subprocess.run(
        [sys.executable, "-m", "choreo", "worker", "shipment"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: database shipment ({schema.hidden(fresh.database_url('shipment'))}) has "
        "tables but no recorded revision, this code needs "
        f"{schema.head_of('shipment')}: run `choreo db upgrade`"
    ]
    assert schema.status(fresh, "shipment").state == "unversioned"


def test_concurrent_upgraders_take_turns(fresh):
    """Four upgraders at once on empty databases (an advisory lock on PostgreSQL, the write lock
    on SQLite): each ends at head, the tables made once."""
    from choreo.infra import schema

    results: list = []
    errors: list = []

    def run() -> None:
        try:
            results.append(schema.upgrade(fresh, "payment"))
        except Exception as exc:  # reported below: the assertion names it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    head = schema.head_of("payment")
    assert sorted(results, key=str) == sorted([(None, head)] + [(head, head)] * 3, key=str)
    assert schema.status(fresh, "payment").ok


def test_a_revision_from_a_newer_choreo_is_reported_and_not_touched(fresh):
    from sqlalchemy import text

    from choreo.infra import schema
    from choreo.infra.db import engine_for

    schema.upgrade(fresh, "user")
    with engine_for(fresh, "user").begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'user_9999'"))
    status = choreo("db", "status", "--service", "user", "--json")
    assert status.exit_code == 1
    assert json.loads(status.output)["databases"][0]["state"] == "unknown"
    result = choreo("db", "upgrade", "--service", "user")
    assert result.exit_code == 1 and "which this code does not know" in result.output
    assert schema.status(fresh, "user").current == "user_9999"
