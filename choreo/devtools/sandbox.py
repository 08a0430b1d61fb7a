"""A private place to run choreo: its own RabbitMQ vhost, Redis (a key prefix, or a server of its
own), folders, ports and (on a database server) databases, and the Settings and CHOREO_*
environment that point at them. The test suite, the chaos harness and the bench each run in
one, so none touches `choreo up`'s stack or another run; `close` removes only what it made.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from functools import cached_property
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from choreo.devtools.cluster import Cluster
from choreo.infra.db import dispose_engines
from choreo.infra.redis_client import redis_client
from choreo.messaging import access
from choreo.ops.stack import free_port, free_port_block, rabbitmqctl
from config.settings import HEALTH_PORT_OFFSETS, SERVICES, Settings
from consumers.registry import topology
from tasks.faults import HOOK_ENV as FAULT_HOOK_ENV

AMQP_BASE = os.environ.get("CHOREO_SANDBOX_AMQP", "amqp://guest:guest@127.0.0.1:5672")
SHARED_REDIS = os.environ.get("CHOREO_SANDBOX_REDIS", "redis://127.0.0.1:6379/0")


def delete_broker_users(users: list[str], cluster_dir: str = "") -> list[str]:
    """Delete these broker users (a missing one is no problem); returns what could not be done.

    One `rabbitmqctl eval` for all of them: each rabbitmqctl call starts an Erlang VM (about a
    second), and a test run deletes dozens of users. Where eval is refused, one call per user.
    """
    if not users:
        return []
    names = ", ".join("<<" + _erlang_string(u) + ">>" for u in users)
    script = (
        "lists:foreach(fun(U) -> catch rabbit_auth_backend_internal:delete_user(U, "
        f'<<"choreo-sandbox">>) end, [{names}]).'
    )
    try:
        rabbitmqctl("eval", script, cluster_dir=cluster_dir)
        return []
    except (RuntimeError, subprocess.TimeoutExpired):
        pass
    problems = []
    for user in users:
        try:
            rabbitmqctl("delete_user", user, check=False, cluster_dir=cluster_dir)
        except subprocess.TimeoutExpired as exc:
            problems.append(f"broker user {user} not deleted: {exc}")
    return problems


def _erlang_string(text: str) -> str:
    """A double-quoted Erlang string literal (inside a binary) of a user name."""
    if not all(c.isprintable() and c.isascii() for c in text):
        raise ValueError(f"not a broker user name choreo makes: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def private_cluster(tag: str, parent: Path | str | None = None, tls: bool = False) -> Cluster:
    """A private three-node RabbitMQ cluster of its own, up, in a new folder (under `parent`) on
    free loopback ports (never a user's `choreo cluster up` ports): the chaos run's and the
    bench's; with `tls`, amqps only and TLS between its nodes. Taken down and removed if it fails
    or is interrupted on its way up."""
    from choreo.devtools.cluster import SPAN

    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    cluster = Cluster(
        Path(tempfile.mkdtemp(prefix=f"choreo-{tag}-cluster-", dir=parent)),
        tag=tag,
        base_port=free_port_block(SPAN) + 1,
        tls=tls,
    )
    try:
        cluster.up()
    except BaseException:  # a Ctrl-C during the half minute it takes too: no nodes left behind
        cluster.down(purge=True)
        raise
    return cluster


class Sandbox:
    """`tag` names the run's resources (choreo-<tag>-<id>). With `own_redis`, a redis-server is
    started on a free port (the chaos harness kills it); otherwise keys go under the run's prefix
    on the shared Redis. `database_server`: databases <prefix>_<service> there, dropped on close;
    empty: SQLite files in the run's folder. `cluster_dir`: its vhost on that private cluster
    (choreo.devtools.cluster), every node in its broker_url, instead of this machine's node; a TLS
    cluster's CA and client certificate with it. `redis_tls`: its own redis-server over TLS only
    (rediss://, no plain port), with the TLS cluster's CA and node certificate.
    `overrides` are further settings (strings or values)."""

    def __init__(
        self,
        tag: str,
        *,
        own_redis: bool = False,
        workdir: Path | str | None = None,
        remove_workdir: bool | None = None,
        database_server: str = "",
        run_id: str | None = None,
        cluster_dir: str | Path | None = None,
        redis_tls: bool = False,
        **overrides: Any,
    ) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.name = f"choreo-{tag}-{self.run_id}"
        # A folder it made is removed on close; a folder it was given, only when told so.
        self.own_workdir = workdir is None if remove_workdir is None else remove_workdir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{self.name}-")).resolve()
        self.vhost = self.name
        self.cluster_dir = str(Path(cluster_dir).resolve()) if cluster_dir else ""
        self.own_redis = own_redis or redis_tls
        cluster = Cluster.open(self.cluster_dir) if self.cluster_dir else None
        self.tls = cluster.tls_files if cluster is not None and cluster.tls else None
        if redis_tls and self.tls is None:
            raise ValueError(
                "redis_tls needs a TLS cluster (cluster_dir of `choreo cluster up --tls`): "
                "its certificates"
            )
        self.redis_tls = redis_tls
        tls_settings: dict[str, str] = {}
        if self.tls is not None:
            tls_settings.update(
                broker_ca_file=str(self.tls.ca),
                broker_cert_file=str(self.tls.client_cert),
                broker_key_file=str(self.tls.client_key),
            )
            if redis_tls:  # never without self.tls: refused above
                tls_settings.update(
                    redis_ca_file=str(self.tls.ca),
                    redis_cert_file=str(self.tls.client_cert),
                    redis_key_file=str(self.tls.client_key),
                )
        self.redis_port = free_port() if self.own_redis else None
        self.redis_proc: subprocess.Popen | None = None
        self.vhost_created = False
        self.database_prefix = (
            f"choreo_{tag}_{self.run_id}".replace("-", "_") if database_server else "choreo"
        )
        self.overrides: dict[str, Any] = {
            # On a cluster, its nodes' guest (loopback only) is the bootstrap user, as on this
            # machine's.
            "broker_url": cluster.urls(vhost=self.vhost)
            if cluster
            else f"{AMQP_BASE}/{self.vhost}",
            # Always said: a cluster the calling shell exported must not catch a sandbox
            # on this machine's node.
            "broker_cluster_dir": self.cluster_dir,
            "redis_url": (
                f"{'rediss' if redis_tls else 'redis'}://127.0.0.1:{self.redis_port}/0"
                if self.own_redis
                else SHARED_REDIS
            ),
            # Never inherit a shell's CA or certificates: the run's own, or none.
            **{
                f"{peer}_{f}_file": ""
                for peer in ("broker", "redis")
                for f in ("ca", "cert", "key")
            },
            "database_ca_file": "",
            **tls_settings,
            "redis_prefix": self.name,
            "namespace": "choreo",
            # Its own broker users (choreo broker setup makes them; close deletes them).
            "broker_user_prefix": f"{self.name}-",
            "data_dir": self.workdir / "data",
            "run_dir": self.workdir / "run",
            "user_service_port": free_port(),
            "flower_port": free_port(),
            # Room for 8 workers per domain (each further worker a block higher:
            # Settings.health_port).
            "health_port_base": free_port_block(8 * len(HEALTH_PORT_OFFSETS)),
            "prometheus_port": free_port(),
            "monitor_port": free_port(),
            "database_server": database_server,
            "database_prefix": self.database_prefix,
            # Its own databases, whatever the calling shell points at.
            **{f"{s}_database_url": "" for s in SERVICES},
            "saga_mode": "choreography",
            **overrides,
        }

    @property
    def env(self) -> dict[str, str]:
        """The CHOREO_* variables that give a process started here the same settings, and no
        test fault hook inherited from the calling shell (a test names one for its own worker)."""
        return {
            **{f"CHOREO_{k.upper()}": str(v) for k, v in self.overrides.items()},
            FAULT_HOOK_ENV: "",
        }

    @cached_property
    def settings(self) -> Settings:
        # Explicit values win over the environment, so this and `env` agree by construction.
        return Settings(**self.overrides)

    @property
    def broker_url(self) -> str:
        return self.overrides["broker_url"]

    @property
    def redis_prefix(self) -> str:
        return self.overrides["redis_prefix"]

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def open(self) -> Sandbox:
        if self.vhost_created:
            return self
        self.log_dir.mkdir(parents=True, exist_ok=True)
        rabbitmqctl("add_vhost", self.vhost, cluster_dir=self.cluster_dir)
        self.vhost_created = True
        # The bootstrap user sets up (users, grants, topology); no process of the sandbox uses it.
        rabbitmqctl(
            "set_permissions",
            "-p",
            self.vhost,
            "guest",
            ".*",
            ".*",
            ".*",
            cluster_dir=self.cluster_dir,
        )
        access.setup(self.settings, topology(self.settings))
        if self.own_redis:
            self.start_redis()
        return self

    def _redis_listen_args(self) -> list[str]:
        if not self.redis_tls:
            return ["--port", str(self.redis_port)]
        if self.tls is None:  # __init__ refuses redis_tls without a TLS cluster
            raise ValueError("redis_tls needs a TLS cluster")
        # With TLS, no plain port at all (--port 0): the client certificate is optional, the
        # password-less loopback server is the sandbox's own.
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.redis_port),
            "--tls-cert-file",
            str(self.tls.node_cert),
            "--tls-key-file",
            str(self.tls.node_key),
            "--tls-ca-cert-file",
            str(self.tls.ca),
            "--tls-auth-clients",
            "optional",
        ]

    def start_redis(self) -> int:
        listen = self._redis_listen_args()
        # The server keeps its own copy of the log's descriptor: ours closes once it started.
        with open(self.log_dir / "redis.log", "ab") as log:
            self.redis_proc = subprocess.Popen(
                [
                    "redis-server",
                    *listen,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        client = redis_client(self.settings)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server on port {self.redis_port} did not start; see "
                        f"{self.log_dir / 'redis.log'}"
                    ) from None
                time.sleep(0.05)
        client.close()
        return self.redis_proc.pid

    def kill_redis(self) -> int | None:
        proc, self.redis_proc = self.redis_proc, None
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return proc.pid

    def close(self, keep: bool = False) -> list[str]:
        """Remove what the sandbox made (its folder only unless `keep`); returns what could not be
        cleaned."""
        problems = []
        if self.own_redis:
            self.kill_redis()
        else:
            problems += self._drop_redis_keys()
        if self.vhost_created:
            try:
                rabbitmqctl("delete_vhost", self.vhost, cluster_dir=self.cluster_dir)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                problems.append(f"vhost {self.vhost} not deleted: {exc}")
            problems += self._delete_users()  # made by open's set-up, with the vhost
        dispose_engines(str(self.workdir))  # its databases go away with it: close their engines
        if self.overrides["database_server"]:
            problems += self._drop_databases()
        if not keep and self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return problems

    def _delete_users(self) -> list[str]:
        """Its broker users, of every namespace it ran (named by its prefix: never another
        run's)."""
        prefix = self.overrides["broker_user_prefix"]
        try:
            listing = rabbitmqctl("list_users", "--no-table-headers", cluster_dir=self.cluster_dir)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return [f"broker users {prefix}* not listed: {exc}"]
        users = [line.split("\t")[0] for line in listing.splitlines()]
        return delete_broker_users(
            [u for u in users if u.startswith(prefix)], cluster_dir=self.cluster_dir
        )

    def _drop_redis_keys(self) -> list[str]:
        try:
            client = redis.Redis.from_url(self.overrides["redis_url"])
            keys = list(client.scan_iter(f"{self.name}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
            client.close()
        except redis.RedisError as exc:
            return [f"redis keys {self.name}:* not deleted: {exc!r}"]
        return []

    def _drop_databases(self) -> list[str]:
        server = str(self.overrides["database_server"]).rstrip("/")
        dispose_engines(self.database_prefix)
        admin = create_engine(
            server.replace("postgresql://", "postgresql+psycopg://") + "/postgres",
            isolation_level="AUTOCOMMIT",
        )
        try:
            with admin.connect() as conn:
                names = (
                    conn.execute(
                        text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                        {"p": self.database_prefix + "\\_%"},
                    )
                    .scalars()
                    .all()
                )
                for name in names:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except SQLAlchemyError as exc:  # reported; never hides the run's result
            return [f"databases {self.database_prefix}_* not dropped: {exc!r}"]
        finally:
            admin.dispose()
        return []
