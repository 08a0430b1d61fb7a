"""Test isolation: each run gets its own RabbitMQ vhost, Redis key prefix, data and run folders.

Set before anything reads settings, so workers the tests start (by the same code path as
`choreo up`) and the test process itself agree on where everything lives.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import pytest

from choreo.stack import free_port, rabbitmqctl  # noqa: F401 (tests import rabbitmqctl from here)

# Set once per run, even if this module is imported twice (as conftest and tests.conftest).
if "CHOREO_TEST_RUN_ID" not in os.environ:
    _run_id = uuid.uuid4().hex[:10]
    _workdir = tempfile.mkdtemp(prefix=f"choreo-test-{_run_id}-")
    os.environ.update({
        "CHOREO_TEST_RUN_ID": _run_id,
        "CHOREO_TEST_WORKDIR": _workdir,
        "CHOREO_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/choreo-test-{_run_id}",
        "CHOREO_REDIS_URL": os.environ.get("CHOREO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "CHOREO_REDIS_PREFIX": f"choreo-test-{_run_id}",
        "CHOREO_DATA_DIR": os.path.join(_workdir, "data"),
        "CHOREO_RUN_DIR": os.path.join(_workdir, "run"),
        "CHOREO_USER_SERVICE_PORT": str(free_port()),
        "CHOREO_FLOWER_PORT": str(free_port()),
        # Short ladder so retry paths finish in seconds (same code, smaller numbers).
        "CHOREO_RETRY_INITIAL_DELAY": "0.2",
        "CHOREO_RETRY_MAX_DELAY": "1.0",
        "CHOREO_OUTBOX_RELAY_AFTER": "1.0",
        "CHOREO_LOG_LEVEL": "INFO",
    })
    if os.environ.get("CHOREO_TEST_DATABASE_SERVER"):
        # The same suite on PostgreSQL: databases <prefix>_<service>, dropped at the end.
        os.environ["CHOREO_DATABASE_SERVER"] = os.environ["CHOREO_TEST_DATABASE_SERVER"]
        os.environ["CHOREO_DATABASE_PREFIX"] = f"choreo_t{_run_id}"

RUN_ID = os.environ["CHOREO_TEST_RUN_ID"]
VHOST = f"choreo-test-{RUN_ID}"
WORKDIR = os.environ["CHOREO_TEST_WORKDIR"]
TEST_ENV = {k: v for k, v in os.environ.items() if k.startswith("CHOREO_")}


@pytest.fixture(scope="session")
def isolated_broker():
    """The run's own vhost; deleted afterwards with everything in it."""
    from config.settings import get_settings

    get_settings.cache_clear()
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    yield VHOST
    rabbitmqctl("delete_vhost", VHOST, check=False)


@pytest.fixture(scope="session")
def isolated_redis():
    import redis

    client = redis.Redis.from_url(TEST_ENV["CHOREO_REDIS_URL"])
    yield client
    for key in client.scan_iter(f"{TEST_ENV['CHOREO_REDIS_PREFIX']}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session", autouse=True)
def cleanup_workdir():
    yield
    if os.environ.get("CHOREO_TEST_KEEP"):  # worker logs and databases, for a post-mortem
        print(f"\nkept the run's folder: {WORKDIR}")
        return
    shutil.rmtree(WORKDIR, ignore_errors=True)


@pytest.fixture(scope="session")
def isolated_databases():
    """On PostgreSQL, the run's own databases, dropped at the end (SQLite files go with WORKDIR)."""
    yield
    server = os.environ.get("CHOREO_DATABASE_SERVER")
    if not server:
        return
    from sqlalchemy import create_engine, text

    from choreo.db import dispose_all

    dispose_all()
    admin = create_engine(server.replace("postgresql://", "postgresql+psycopg://") + "/postgres",
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                             {"p": os.environ["CHOREO_DATABASE_PREFIX"] + "\\_%"}).scalars().all()
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def settings(isolated_broker, isolated_redis, isolated_databases):
    from choreo.messaging.topology import Topology
    from choreo.queries import prepare
    from config.settings import get_settings

    s = get_settings()
    assert VHOST in s.broker_url
    prepare(s)
    Topology(s).declare()
    return s
