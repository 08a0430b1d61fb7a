"""The user service (customers over HTTP, plus /health /ready /metrics /breakers) and its client,
behind a shared circuit breaker and a bulkhead.

The server is a Starlette app run by uvicorn. GET /users/{id} wants `Authorization: Bearer <token>`,
one token per calling service (CALLERS): from CHOREO_USERS_TOKEN_<CALLER>, else the owner-only file
run_dir/secrets/users-token-<caller> (choreo.infra.secrets), generated once; the server loads every
caller's token at start. The probe paths stay open (Prometheus scrapes them, on loopback). Every
response carries X-Request-ID: the caller's when sane, else a new one; the log lines about the
request carry it too."""

from __future__ import annotations

import hmac
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx
import pybreaker
import redis
import uvicorn
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from choreo.infra import logs
from choreo.infra.db import reachable
from choreo.infra.health import PATHS, Cached, route
from choreo.infra.secrets import SECRETS_DIR, env_name, secret, secret_path
from choreo.infra.telemetry import Recorder
from config.catalog import CUSTOMERS
from config.settings import DOMAINS
from models.tables import Customer

log = logging.getLogger("choreo.world.users")

# Who may call GET /users/{id}: the five domains, the orchestrator, the operator (CLI and agent).
CALLERS = (*DOMAINS, "orchestrator", "operator")
TOKEN_KIND = "users_token"
REQUEST_ID = "X-Request-ID"
_REALM = 'Bearer realm="choreo-users"'


def users_token(run_dir: Path | str, caller: str, *, create: bool = True) -> str | None:
    """`caller`'s token for the user service: CHOREO_USERS_TOKEN_<CALLER>, else its file."""
    return secret(run_dir, TOKEN_KIND, caller, create=create)


def token_env(caller: str) -> str:
    return env_name(TOKEN_KIND, caller)


def token_file(run_dir: Path | str, caller: str) -> Path:
    """Where `users_token` keeps `caller`'s token when its variable is not set."""
    return secret_path(run_dir, TOKEN_KIND, caller)


def sane_request_id(value: str | None) -> str | None:
    """The caller's request id if it is one to repeat in headers and logs: 1-128 printable ASCII."""
    if value and len(value) <= 128 and all(" " <= ch <= "~" for ch in value) and value.strip():
        return value
    return None


class UserServiceUnavailable(Exception):
    """Transient: the user service did not answer; the retry ladder will try again."""


class UsersAuthError(Exception):
    """Not transient: the user service answered 401 to this caller's token. A configuration error
    (the caller and the service disagree on the token); it does not count against the breaker."""


class UsersClient:
    """GET /users/{id}. One pooled HTTP client per process; a breaker whose state lives in Redis,
    so every worker process stops calling a dead service at once; a semaphore as bulkhead so a
    slow user service can hold at most `max_concurrent` of this process's threads. `token` is
    the bearer token of `caller` (users_token); without one the service answers 401."""

    def __init__(
        self,
        base_url: str,
        redis_client: redis.Redis | None,
        namespace: str,
        timeout: float = 2.0,
        max_concurrent: int = 4,
        *,
        caller: str | None = None,
        token: str | None = None,
        run_dir: Path | str | None = None,
    ) -> None:
        self.caller, self.run_dir, self.has_token = caller, run_dir, bool(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)
        storage = None
        if redis_client is not None:
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, redis_client, namespace=f"{namespace}:breaker:users"
            )
        # A 401 is an answer: the service is up, so it is no failure of the breaker's (it would
        # open it and hide the real problem behind "circuit open").
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=5,
            reset_timeout=10,
            state_storage=storage,
            name="user-service",
            exclude=[UsersAuthError],
        )
        self.bulkhead = threading.BoundedSemaphore(max_concurrent)

    def _fetch(self, customer_id: str, request_id: str) -> dict | None:
        resp = self.http.get(f"/users/{customer_id}", headers={REQUEST_ID: request_id})
        if resp.status_code == 401:
            raise UsersAuthError(self._refused(resp, request_id))
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()

    def _refused(self, resp: httpx.Response, request_id: str) -> str:
        try:
            said = resp.json().get("error", "")
        except ValueError:
            said = resp.text[:200]
        if self.caller is None:
            fix = "this client was built without a caller and token"
        else:
            where = (
                token_file(self.run_dir, self.caller)
                if self.run_dir is not None
                else f"<run_dir>/{SECRETS_DIR}/users-token-{self.caller}"
            )
            fix = (
                f"check {token_env(self.caller)} or the file {where}: caller and user service must "
                f"see the same token (the service reads them at start)"
            )
        token = "its token" if self.has_token else "no token"
        return (
            f"user service refused {self.caller or 'this client'!s} with {token} "
            f"(401 {said!r}, request id {request_id}): {fix}"
        )

    def get(self, customer_id: str, request_id: str | None = None) -> dict | None:
        """The customer, or None when the service has none of that id. UserServiceUnavailable
        when it does not answer (transient), UsersAuthError when it refuses the token."""
        request_id = sane_request_id(request_id) or uuid.uuid4().hex
        if not self.bulkhead.acquire(timeout=5):
            raise UserServiceUnavailable("bulkhead full: too many concurrent user-service calls")
        try:
            return self.breaker.call(self._fetch, customer_id, request_id)
        except pybreaker.CircuitBreakerError as exc:
            raise UserServiceUnavailable(f"circuit open: {exc}") from None
        except (httpx.HTTPError, redis.RedisError) as exc:
            raise UserServiceUnavailable(
                f"user service: {exc!r} (request id {request_id})"
            ) from None
        finally:
            self.bulkhead.release()

    def breaker_state(self) -> dict:
        return {
            "name": self.breaker.name,
            "state": self.breaker.current_state,
            "failures": self.breaker.fail_counter,
        }


def seed_customers(engine: Engine) -> None:
    with Session(engine) as s:
        for cid in CUSTOMERS:
            if s.get(Customer, cid) is None:
                n = cid.split("-")[1]
                s.add(Customer(id=cid, name=f"Customer {n}", email=f"customer{n}@example.test"))
        s.commit()


class UserServiceProbes:
    """The user service's /health (its HTTP thread answers), /ready (its database answers),
    /breakers (none: the breakers are in its callers, the workers)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.readiness = Cached(self._readiness)

    def liveness(self) -> tuple[bool, dict]:
        return True, {"state": "serving"}

    def _readiness(self) -> tuple[bool, dict]:
        ok = reachable(self.engine)
        return ok, {"checks": {"database": ok}}

    def breakers(self) -> list[dict]:
        return []


class Tokens:
    """Each caller's token, to tell which caller a presented token is (never logged)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._by_token = [(t.encode(), caller) for caller, t in tokens.items()]
        seen: dict[str, str] = {}
        for caller, t in tokens.items():
            if t in seen:
                log.warning(
                    "callers %s and %s have the same users token: it names %s",
                    seen[t],
                    caller,
                    seen[t],
                )
            seen.setdefault(t, caller)

    @classmethod
    def load(cls, run_dir: Path | str, callers=CALLERS) -> Tokens:
        """Every caller's token (files created for those that have neither variable nor file)."""
        tokens: dict[str, str] = {}
        for caller in callers:
            token = users_token(run_dir, caller)
            assert token is not None  # users_token creates it when missing
            tokens[caller] = token
        return cls(tokens)

    def caller(self, authorization: str | None) -> str | None:
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        presented = given.strip().encode(
            "latin-1", "replace"
        )  # the header bytes (ASGI decodes latin-1)
        found = None
        for (
            token,
            caller,
        ) in self._by_token:  # every token compared: the time does not say which matched
            if hmac.compare_digest(token, presented) and found is None:
                found = caller
        return found


class RequestIds:
    """ASGI middleware: the request's X-Request-ID (the caller's if sane, else a new uuid4 hex) on
    its response and its log lines; one access line at DEBUG; an error answered as JSON 500."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = sane_request_id(Headers(scope=scope).get(REQUEST_ID)) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        sent: dict = {}

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                message.setdefault("headers", [])
                MutableHeaders(scope=message).append(REQUEST_ID, rid)
            await send(message)

        started = time.monotonic()
        with logs.bound(request_id=rid):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.error("users http: %s %s failed", scope["method"], scope["path"], exc_info=True)
                if "status" in sent:
                    raise
                await JSONResponse({"error": "internal error"}, 500)(scope, receive, send_with_id)
            log.debug(
                "users http: %s %s %s %.1fms",
                scope["method"],
                scope["path"],
                sent.get("status"),
                (time.monotonic() - started) * 1000,
                extra={"caller": state.get("caller")},
            )


def make_app(engine: Engine, tokens: Tokens, metrics: bool = True) -> Starlette:
    probes = UserServiceProbes(engine)
    recorder = Recorder("users", metrics)
    heard: set[str] = set()

    def unauthorized(request: Request) -> JSONResponse:
        given = "authorization" in request.headers
        recorder.handled("GET /users", "unauthorized")
        log.warning(
            "users http: refused %s %s: %s bearer token",
            request.method,
            request.url.path,
            "invalid" if given else "no",
        )
        return JSONResponse(
            {"error": "invalid bearer token" if given else "bearer token required"},
            401,
            headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"' if given else _REALM},
        )

    def get_user(request: Request) -> Response:  # sync: Starlette runs it in its threadpool
        caller = tokens.caller(request.headers.get("authorization"))
        if caller is None:
            return unauthorized(request)
        request.state.caller = caller
        if caller not in heard:
            heard.add(caller)
            log.info("users http: first request from %s", caller, extra={"caller": caller})
        customer_id = request.path_params["customer_id"]
        started = time.monotonic()
        try:
            with Session(engine) as s:
                c = s.get(Customer, customer_id)
        except Exception:
            recorder.handled("GET /users", "error", time.monotonic() - started)
            raise
        recorder.handled(
            "GET /users", "processed" if c else "not_found", time.monotonic() - started
        )
        if c is None:
            return JSONResponse({"error": f"no user {customer_id!r}"}, 404)
        return JSONResponse({"id": c.id, "name": c.name, "email": c.email})

    def probe(request: Request) -> Response:  # sync: /ready asks the database
        answer = route(request.url.path, probes, "users")
        assert answer is not None  # mounted on PATHS only, each of which `route` answers
        status, content_type, data = answer
        return Response(data, status, headers={"Content-Type": content_type})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette types a handler as taking any Exception; it calls this one for HTTPException.
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"error": str(exc.detail).lower()}, exc.status_code, headers=exc.headers
        )

    return Starlette(
        routes=[
            Route("/users/{customer_id}", get_user, methods=["GET"]),
            *(Route(path, probe, methods=["GET"]) for path in PATHS),
        ],
        middleware=[Middleware(RequestIds)],
        exception_handlers={HTTPException: http_error},
    )


class UserService:
    """uvicorn serving the app on host:port. `serve_forever` in the main thread stops on SIGTERM or
    SIGINT: it stops accepting, lets requests in flight finish (5 s at most), and returns (SIGTERM:
    exits 0). From another thread (tests), `shutdown` stops it. The port is bound with SO_REUSEADDR
    (asyncio's default), so a restarted service rebinds it at once."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self.app = app
        logging.getLogger("uvicorn.error").addFilter(_plain)
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",
                server_header=False,
                timeout_graceful_shutdown=5,
            )
        )

    def serve_forever(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            self.server.run()
            return
        # uvicorn raises again the signal it stopped on, once it has shut down: SIGTERM's default
        # action would end the process as killed; this handler makes that a normal exit 0.
        previous = signal.signal(signal.SIGTERM, _exit_cleanly)
        try:
            self.server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)

    @property
    def started(self) -> bool:
        return self.server.started

    def shutdown(self) -> None:
        self.server.should_exit = True


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def _plain(record: logging.LogRecord) -> bool:
    """uvicorn's lines carry a copy of their message with terminal colours: not for JSON logs."""
    record.__dict__.pop("color_message", None)
    return True


def make_server(
    engine: Engine, host: str, port: int, metrics: bool = True, *, run_dir: Path | str
) -> UserService:
    """The user service of `choreo users`, its callers' tokens loaded (created when missing) from
    run_dir."""
    tokens = Tokens.load(run_dir)
    from_env = [c for c in CALLERS if os.environ.get(token_env(c))]
    log.info(
        "user service accepts the tokens of %s (from the environment: %s; else files in %s)",
        ", ".join(CALLERS),
        ", ".join(from_env) or "none",
        Path(run_dir) / SECRETS_DIR,
    )
    return UserService(make_app(engine, tokens, metrics), host, port)
