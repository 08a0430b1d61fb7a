"""Alembic's environment for every service's database: run by choreo.infra.schema, which hands
it the connection (from choreo.infra.db.engine_for) and the service; the service's models alone
are the target, and SQLite gets batch mode so later ALTERs work there."""

from __future__ import annotations

from alembic import context

from choreo.infra.schema import VERSION_TABLE, target_metadata

config = context.config
connection = config.attributes.get("connection")
service = config.attributes.get("service")
if connection is None or service is None:
    raise RuntimeError(
        "choreo's migrations run through `choreo db upgrade` / `choreo db revision` "
        "(choreo.infra.schema), which name the service and its database; not the alembic command"
    )
if context.is_offline_mode():
    raise RuntimeError("choreo's migrations run online only (`choreo db upgrade`)")

context.configure(
    connection=connection,
    target_metadata=target_metadata(service),
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite cannot ALTER most things: copy-and-move, in Alembic's batch mode
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
