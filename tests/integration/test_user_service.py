"""The user service as `choreo users` runs it (a subprocess on a free port, its own run and data
folders): bearer tokens per caller, X-Request-ID, open probes, the client's token and breaker,
SIGTERM and an immediate restart on the same port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAYMENT_ENV_TOKEN = "payment-token-from-the-environment"


def _env(tmp: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_USERS_TOKEN_")}
    env.update(
        {
            "CHOREO_RUN_DIR": str(tmp / "run"),
            "CHOREO_DATA_DIR": str(tmp / "data"),
            "CHOREO_USER_SERVICE_PORT": str(port),
            "CHOREO_USER_SERVICE_HOST": "127.0.0.1",
            "CHOREO_USER_DATABASE_URL": f"sqlite:///{tmp / 'users.db'}",
            "CHOREO_LOG_LEVEL": "DEBUG",
            "CHOREO_LOG_JSON": "true",
            "CHOREO_USERS_TOKEN_PAYMENT": PAYMENT_ENV_TOKEN,
        }
    )
    return env


def _upgrade(env: dict[str, str]) -> None:
    """What `choreo up` does before it starts the user service: its database to this code's
    schema (the service itself refuses one that is not)."""
    done = subprocess.run(
        [sys.executable, "-m", "choreo", "db", "upgrade", "--service", "user"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "choreo", "users"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{env['CHOREO_USER_SERVICE_PORT']}"

    def ready():
        assert proc.poll() is None, (
            f"user service exited {proc.returncode}: {log.read_text()[-2000:]}"
        )
        try:
            return httpx.get(url + "/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 30, what="the user service's /ready")
    return proc


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise
    return proc.returncode


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from choreo.infra.secrets import secrets_dir
    from choreo.ops.stack import free_port

    tmp = tmp_path_factory.mktemp("users")
    # A file for payment that its variable must win over.
    path = secrets_dir(tmp / "run") / "users-token-payment"
    path.write_text("payment-token-from-the-file\n")
    path.chmod(0o600)
    env = _env(tmp, free_port())
    log = tmp / "users.log"
    _upgrade(env)
    proc = _start(env, log)
    url = f"http://127.0.0.1:{env['CHOREO_USER_SERVICE_PORT']}"
    yield {"url": url, "run_dir": tmp / "run", "log": log, "proc": proc, "env": env}
    _stop(proc)


def _token(service, caller: str) -> str:
    return (service["run_dir"] / "secrets" / f"users-token-{caller}").read_text().strip()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _log_lines(service) -> list[dict]:
    out = []
    for line in service["log"].read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _assert_401(resp: httpx.Response) -> None:
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/json"
    assert "error" in resp.json()
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_every_caller_gets_an_owner_only_token_file_at_start(service):
    from choreo.world.users import CALLERS

    secrets = service["run_dir"] / "secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    for caller in CALLERS:  # (payment's comes from its variable: its file is the test's own)
        f = secrets / f"users-token-{caller}"
        assert f.stat().st_mode & 0o777 == 0o600
        assert caller == "payment" or len(f.read_text().strip()) >= 32


def test_no_token_is_401(service):
    _assert_401(httpx.get(service["url"] + "/users/cust-1"))


def test_a_wrong_token_is_401(service):
    resp = httpx.get(
        service["url"] + "/users/cust-1", headers=_bearer("not-" + _token(service, "order"))
    )
    _assert_401(resp)
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    _assert_401(
        httpx.get(service["url"] + "/users/cust-1", headers=_bearer(_token(service, "order")[:-1]))
    )


def test_a_token_of_another_kind_is_401(service):
    from choreo.infra.secrets import secret

    broker_password = secret(
        service["run_dir"], "broker_password", "order"
    )  # a real secret, of another kind
    _assert_401(httpx.get(service["url"] + "/users/cust-1", headers=_bearer(broker_password)))
    # The right token in another scheme is no bearer token.
    _assert_401(
        httpx.get(
            service["url"] + "/users/cust-1",
            headers={"Authorization": f"Basic {_token(service, 'order')}"},
        )
    )
    _assert_401(
        httpx.get(
            service["url"] + "/users/cust-1", headers={"Authorization": _token(service, "order")}
        )
    )
    _assert_401(httpx.get(service["url"] + "/users/cust-1", headers={"Authorization": "Bearer"}))


def test_the_order_services_token_reads_a_customer_and_404s_an_unknown_one(service):
    resp = httpx.get(service["url"] + "/users/cust-1", headers=_bearer(_token(service, "order")))
    assert resp.status_code == 200
    assert resp.json() == {"id": "cust-1", "name": "Customer 1", "email": "customer1@example.test"}
    resp = httpx.get(
        service["url"] + "/users/cust-nobody", headers=_bearer(_token(service, "order"))
    )
    assert resp.status_code == 404 and "error" in resp.json()
    # The scheme is case-insensitive (RFC 7235).
    assert (
        httpx.get(
            service["url"] + "/users/cust-2",
            headers={"Authorization": f"bearer {_token(service, 'order')}"},
        ).status_code
        == 200
    )


def test_the_environment_variable_wins_over_the_file(service):
    assert (
        httpx.get(service["url"] + "/users/cust-1", headers=_bearer(PAYMENT_ENV_TOKEN)).status_code
        == 200
    )
    _assert_401(
        httpx.get(service["url"] + "/users/cust-1", headers=_bearer("payment-token-from-the-file"))
    )


def test_the_request_id_is_echoed_or_made_and_in_the_log_lines(service):
    token = _token(service, "order")
    rid = f"req-{uuid.uuid4().hex}"
    resp = httpx.get(
        service["url"] + "/users/cust-1", headers={**_bearer(token), "X-Request-ID": rid}
    )
    assert resp.status_code == 200 and resp.headers["x-request-id"] == rid
    made = httpx.get(service["url"] + "/users/cust-1", headers=_bearer(token)).headers[
        "x-request-id"
    ]
    assert len(made) == 32 and int(made, 16) >= 0
    for bad in ("x" * 129, "tab\there", "naïve".encode()):
        got = httpx.get(service["url"] + "/health", headers={"X-Request-ID": bad}).headers[
            "x-request-id"
        ]
        assert got != bad and len(got) == 32
    refused = httpx.get(service["url"] + "/users/cust-1", headers={"X-Request-ID": rid + "-401"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == rid + "-401"
    assert (
        httpx.get(service["url"] + "/nowhere", headers={"X-Request-ID": rid + "-404"}).headers[
            "x-request-id"
        ]
        == rid + "-404"
    )

    def access_line():
        return [
            entry
            for entry in _log_lines(service)
            if entry.get("request_id") == rid and entry["msg"].startswith("users http: GET")
        ]

    line = wait_for(access_line, 5, what="the access line of the request")[0]
    assert line["level"] == "DEBUG" and line["caller"] == "order" and " 200 " in line["msg"]
    assert wait_for(
        lambda: [
            entry
            for entry in _log_lines(service)
            if entry.get("request_id") == rid + "-401" and entry["level"] == "WARNING"
        ],
        5,
        what="the refusal's log line",
    )
    text = service["log"].read_text()
    assert token not in text and PAYMENT_ENV_TOKEN not in text  # no token is ever logged


def test_probe_routes_answer_without_a_token(service):
    health = httpx.get(service["url"] + "/health")
    assert (
        health.status_code == 200
        and health.json()["service"] == "users"
        and health.json()["status"] == "ok"
    )
    ready = httpx.get(service["url"] + "/ready")
    assert ready.status_code == 200 and ready.json() == {
        "ready": True,
        "service": "users",
        "checks": {"database": True},
    }
    metrics = httpx.get(service["url"] + "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert (
        'service_request_total{outcome="processed",service="users",type="GET /users"}'
        in metrics.text
    )
    assert 'outcome="unauthorized",service="users"' in metrics.text
    assert httpx.get(service["url"] + "/breakers").json() == {"service": "users", "breakers": []}
    assert httpx.get(service["url"] + "/nowhere").json() == {"error": "not found"}


def test_users_client_with_its_token_gets_the_customer(service, isolated_redis):
    from choreo.world.users import UsersClient, users_token

    ns = f"{os.environ['CHOREO_REDIS_PREFIX']}:users-test-{uuid.uuid4().hex[:8]}"
    client = UsersClient(
        service["url"],
        isolated_redis,
        ns,
        caller="notification",
        token=users_token(service["run_dir"], "notification", create=False),
        run_dir=service["run_dir"],
    )
    assert client.get("cust-3") == {
        "id": "cust-3",
        "name": "Customer 3",
        "email": "customer3@example.test",
    }
    assert client.get("cust-nobody") is None
    rid = f"client-{uuid.uuid4().hex}"
    assert client.get("cust-1", request_id=rid)["id"] == "cust-1"
    assert wait_for(
        lambda: [
            entry
            for entry in _log_lines(service)
            if entry.get("request_id") == rid and entry.get("caller") == "notification"
        ],
        5,
        what="the client's request id in the log",
    )
    assert client.breaker_state()["state"] == "closed"


def test_users_client_with_a_wrong_token_fails_clearly_and_leaves_the_breaker_closed(
    service, isolated_redis
):
    from choreo.world.users import UsersAuthError, UsersClient, UserServiceUnavailable, token_file

    ns = f"{os.environ['CHOREO_REDIS_PREFIX']}:users-test-{uuid.uuid4().hex[:8]}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    client = UsersClient(
        service["url"],
        isolated_redis,
        ns,
        caller="notification",
        token=wrong,
        run_dir=service["run_dir"],
    )
    for _ in range(client.breaker.fail_max + 2):
        with pytest.raises(UsersAuthError) as caught:
            client.get("cust-1")
        assert not isinstance(caught.value, UserServiceUnavailable)
    message = str(caught.value)
    assert "401" in message and "CHOREO_USERS_TOKEN_NOTIFICATION" in message
    assert str(token_file(service["run_dir"], "notification")) in message
    assert token_file(service["run_dir"], "notification").exists()  # the path named is the real one
    assert wrong not in message  # the token itself is not in the message
    assert client.breaker_state() == {"name": "user-service", "state": "closed", "failures": 0}
    # Built without a token (the operator's breaker views): refused as clearly.
    with pytest.raises(UsersAuthError, match="no token"):
        UsersClient(service["url"], None, ns).get("cust-1")


def test_a_service_that_is_down_still_trips_the_breaker(isolated_redis):
    from choreo.ops.stack import free_port
    from choreo.world.users import UsersClient, UserServiceUnavailable

    ns = f"{os.environ['CHOREO_REDIS_PREFIX']}:users-test-{uuid.uuid4().hex[:8]}"
    client = UsersClient(
        f"http://127.0.0.1:{free_port()}", isolated_redis, ns, caller="order", token="t"
    )
    for _ in range(client.breaker.fail_max):
        with pytest.raises(UserServiceUnavailable):
            client.get("cust-1")
    assert client.breaker_state()["state"] == "open"


def test_live_deps_send_the_token_of_their_caller(service, isolated_redis):
    from choreo.app.bootstrap import LiveDeps
    from config.settings import Settings

    s = Settings(
        run_dir=service["run_dir"],
        user_service_port=int(service["env"]["CHOREO_USER_SERVICE_PORT"]),
        redis_prefix=f"{os.environ['CHOREO_REDIS_PREFIX']}:users-test-{uuid.uuid4().hex[:8]}",
    )
    users = LiveDeps(s, isolated_redis, caller="notification").users
    assert users.caller == "notification" and users.get("cust-2")["id"] == "cust-2"
    # A worker's runtime builds its deps with its domain (tasks.runtime).
    from tasks.app import make_app
    from tasks.runtime import runtime

    app = make_app("shipment", s)
    try:
        assert runtime(app).deps.caller == "shipment"
    finally:
        app.close()


def test_sigterm_stops_it_cleanly_and_a_restart_rebinds_the_port_at_once(tmp_path):
    from choreo.ops.stack import free_port

    env = _env(tmp_path, free_port())
    log = tmp_path / "users.log"
    url = f"http://127.0.0.1:{env['CHOREO_USER_SERVICE_PORT']}"
    _upgrade(env)
    proc = _start(env, log)
    try:
        token = (tmp_path / "run" / "secrets" / "users-token-order").read_text().strip()
        with httpx.Client(base_url=url, headers=_bearer(token)) as c:  # a kept-alive connection
            assert c.get("/users/cust-1").status_code == 200
            assert _stop(proc) == 0
        assert "Shutting down" in log.read_text()
        proc = _start(
            env, log
        )  # the closed connections' ports are in TIME_WAIT: it binds all the same
        assert httpx.get(url + "/users/cust-1", headers=_bearer(token)).status_code == 200
    finally:
        _stop(proc)
