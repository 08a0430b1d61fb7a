"""Test isolation: the run gets a sandbox of its own (choreo.devtools.sandbox): a RabbitMQ vhost, a
Redis key prefix, data and run folders, ports, and on PostgreSQL its own databases.

Its CHOREO_* variables are set before anything reads settings, so workers the tests start
(by the same code path as `choreo up`) and the test process itself agree on where everything lives.
"""

from __future__ import annotations

import os

import pytest

from choreo.devtools.sandbox import Sandbox
from choreo.ops.stack import rabbitmqctl  # noqa: F401 (tests import rabbitmqctl from here)

# Short ladder so retry paths finish in seconds (same code, smaller numbers).
_TEST_SETTINGS = {
    "retry_initial_delay": "0.2",
    "retry_max_delay": "1.0",
    "outbox_relay_after": "1.0",
    "log_level": "INFO",
}
_first = (
    "CHOREO_TEST_RUN_ID" not in os.environ
)  # this module may be imported twice (conftest, tests.conftest)
SANDBOX = Sandbox(
    "test",
    run_id=os.environ.get("CHOREO_TEST_RUN_ID"),
    workdir=os.environ.get("CHOREO_TEST_WORKDIR"),
    remove_workdir=True,
    database_server=os.environ.get("CHOREO_TEST_DATABASE_SERVER", ""),
    **_TEST_SETTINGS,
)
if _first:
    os.environ.update(
        {
            **SANDBOX.env,
            "CHOREO_TEST_RUN_ID": SANDBOX.run_id,
            "CHOREO_TEST_WORKDIR": str(SANDBOX.workdir),
        }
    )

RUN_ID = SANDBOX.run_id
VHOST = SANDBOX.vhost
WORKDIR = str(SANDBOX.workdir)
TEST_ENV = {k: v for k, v in os.environ.items() if k.startswith("CHOREO_")}


@pytest.fixture(scope="session", autouse=True)
def sandbox():
    """Removes what the run made at the end (the folder stays with CHOREO_TEST_KEEP=1, for a
    post-mortem)."""
    yield SANDBOX
    keep = bool(os.environ.get("CHOREO_TEST_KEEP"))
    for problem in SANDBOX.close(keep=keep):
        print(f"\nsandbox cleanup: {problem}")
    if keep:
        print(f"\nkept the run's folder: {WORKDIR}")


@pytest.fixture(scope="session")
def isolated_broker(sandbox):
    """The run's own vhost; deleted at the end with everything in it."""
    sandbox.open()
    return sandbox.vhost


@pytest.fixture(scope="session")
def isolated_redis(sandbox):
    import redis

    client = redis.Redis.from_url(TEST_ENV["CHOREO_REDIS_URL"])
    yield client
    client.close()


@pytest.fixture(scope="session")
def settings(isolated_broker, isolated_redis):
    from choreo.app.bootstrap import prepare
    from config.settings import get_settings

    get_settings.cache_clear()
    s = get_settings()
    assert VHOST in s.broker_url
    prepare(s)  # the broker's users, grants and topology: the sandbox's set-up (Sandbox.open)
    return s
