"""A private RabbitMQ cluster on this machine (`choreo cluster up`): N nodes of the installed
RabbitMQ under one folder, to try quorum replicas, failover and node faults for real, never
touching the machine's own node (rabbit@<host>: its cookie, its epmd on 4369, its ports).

Isolated by construction: one cookie, generated into the folder (0400) and read as
$HOME/.erlang.cookie (HOME=the folder), never on a command line; its own epmd on base_port
(ERL_EPMD_PORT; -start_epmd false); node i's AMQP on base_port+i, management +10+i, distribution
+20+i, rabbitmqctl's +30..+39, all on 127.0.0.1; per node a rabbitmq.conf, enabled plugins
(management) and an empty rabbitmq-env.conf (/etc/rabbitmq's names the machine's node); the real
scripts, not Debian's /usr/sbin wrappers (they run as user rabbitmq: the machine node's cookie).
Every process started here has CHOREO_CLUSTER_ID in its environment, a node's command line names
it (-choreo_node NAME): no other process is ever signalled. The folder's `rabbitmqctl` (`choreo
cluster ctl`) is what choreo.messaging.access runs when settings.broker_cluster_dir is set.

With TLS (`Cluster(tls=True)`, `choreo cluster up --tls`; kept in cluster.json): amqps only, HTTPS
management and Erlang distribution over TLS, all certified by a CA of the folder's own
(choreo.devtools.cluster_files, choreo.ops.tlsca).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

from choreo.devtools import cluster_files as nodefiles
from choreo.ops import procfs, tlsca

# Shortnames: /etc/hosts maps it to 127.0.0.1 (the machine's node is rabbit@localhost too).
HOST = "localhost"
DEFAULT_BASE_PORT = 5700
SPAN = 40  # ports a cluster takes from base_port (the layout above)
MAX_SIZE = 9
STATE = "cluster.json"
CTL = "rabbitmqctl"  # the folder's own: choreo.messaging.access.apply runs it by this name


class ClusterError(RuntimeError):
    pass


def rabbitmq_bin() -> Path:
    """The real rabbitmq-server's and rabbitmqctl's folder (Debian's /usr/sbin links to a wrapper in
    it)."""
    found = shutil.which("rabbitmq-server") or "/usr/lib/rabbitmq/bin/rabbitmq-server"
    return Path(os.path.realpath(found)).parent


def available() -> bool:
    return (rabbitmq_bin() / "rabbitmq-server").is_file() and shutil.which("epmd") is not None


def _saved(base_dir: Path) -> dict | None:
    try:
        return json.loads((base_dir / STATE).read_text())
    except (OSError, ValueError):
        return None


def _each(fn: Callable[[int], Any], nodes: Iterable[int]) -> list:
    """fn(i) for every node side by side (each mostly waits on a node); its first error, raised."""
    with ThreadPoolExecutor(MAX_SIZE) as pool:
        return list(pool.map(fn, nodes))


class Cluster:
    """A cluster's folder: cluster.json (its id, tag, size, base port, the pids it started), the
    cookie, and n<i>/ per node (rabbitmq.conf, enabled_plugins, mnesia/, log/)."""

    def __init__(
        self,
        base_dir: Path | str,
        tag: str = "choreo",
        size: int = 3,
        base_port: int | None = None,
        tls: bool | None = None,
    ) -> None:
        """`tls`: None keeps what the folder's cluster has (off for a new one)."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", tag) or not 1 <= size <= MAX_SIZE:
            raise ClusterError(
                f"tag {tag!r}, size {size}: letters, digits, - and _; from 1 to {MAX_SIZE} nodes"
            )
        self.base_dir = Path(base_dir).resolve()
        saved = _saved(self.base_dir)
        if saved and (saved["tag"], saved["size"]) != (tag, size):
            raise ClusterError(
                f"{self.base_dir} holds a cluster of {saved['size']} nodes "
                f"tagged {saved['tag']!r}; remove it first (choreo cluster down --purge)"
            )
        if saved and saved["nodes"] and base_port not in (None, saved["base_port"]):
            raise ClusterError(
                f"the cluster in {self.base_dir} was started from port {saved['base_port']}; "
                "stop it first (choreo cluster down)"
            )
        self.tag, self.size = tag, size
        self.base_port = base_port or (saved or {}).get("base_port") or DEFAULT_BASE_PORT
        if not 1024 <= self.base_port <= 65535 - SPAN:
            raise ClusterError(f"base port {self.base_port}: from 1024 to {65535 - SPAN}")
        self.state: dict[str, Any] = saved or {
            "id": secrets.token_hex(8),
            "tag": tag,
            "size": size,
            "epmd_pid": None,
            "nodes": {},
        }
        self.state["base_port"] = self.base_port
        self._children: list[subprocess.Popen] = []  # reaped once they end, so none stays a zombie
        was = bool(self.state.get("tls", False))
        self.tls = was if tls is None else bool(tls)
        if (
            saved
            and self.tls != was
            and (running := [self.name(i) for i in self.nodes if self.pid(i)])
        ):
            raise ClusterError(
                f"the cluster in {self.base_dir} runs {'with' if was else 'without'} TLS "
                f"({', '.join(running)}); stop it first (choreo cluster down) to turn TLS "
                f"{'off' if was else 'on'}"
            )
        if self.tls and re.search(
            r"\s", str(self.base_dir)
        ):  # the Erlang flags naming its files are word-split
            raise ClusterError(
                f"{self.base_dir}: a cluster with TLS needs a folder path without spaces"
            )
        self.state["tls"] = self.tls

    @classmethod
    def open(cls, base_dir: Path | str) -> Cluster:
        """The cluster a folder holds, as it was made (tag, size, ports)."""
        if not (saved := _saved(Path(base_dir).resolve())):
            raise ClusterError(
                f"no cluster in {Path(base_dir).resolve()} (choreo cluster up makes one)"
            )
        return cls(
            base_dir, saved["tag"], saved["size"], saved["base_port"], tls=saved.get("tls", False)
        )

    @property
    def nodes(self) -> range:
        return range(1, self.size + 1)

    def name(self, i: int) -> str:
        return f"{self.tag}-n{i}@{HOST}"

    def ports(self, i: int) -> dict[str, int]:
        return {
            "amqp": self.base_port + i,
            "mgmt": self.base_port + 10 + i,
            "dist": self.base_port + 20 + i,
        }

    def folder(self, i: int) -> Path:
        return self.base_dir / f"n{i}"

    @property
    def tls_files(self) -> tlsca.TlsFiles:
        return tlsca.TlsFiles(self.base_dir / nodefiles.TLS_DIR)

    def _dist_args(self) -> str:
        return nodefiles.dist_args(self.tls_files.folder if self.tls else None)

    def logs(self, i: int) -> str:
        log = self.folder(i) / "log"
        return f"{log / self.name(i)}.log and {log / 'console.log'}"

    def ctl_env(self, i: int = 1) -> dict[str, str]:
        """rabbitmqctl's environment for node i (the epmd's too): the cluster's cookie and
        epmd, and none of the caller's RABBITMQ_* or ERL_* (a cookie, a node name, flags
        for the machine's node)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return dict(
            env,
            HOME=str(self.base_dir),
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
            CHOREO_CLUSTER_ID=self.state["id"],
            ERL_EPMD_PORT=str(self.base_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.name(i),
            RABBITMQ_CONF_ENV_FILE=str(self.base_dir / "rabbitmq-env.conf"),
            RABBITMQ_CTL_DIST_PORT_MIN=str(self.base_port + 30),
            RABBITMQ_CTL_DIST_PORT_MAX=str(self.base_port + 39),
            RABBITMQ_CTL_ERL_ARGS=self._dist_args(),
        )

    def _node_env(self, i: int) -> dict[str, str]:
        d = self.folder(i)
        return dict(
            self.ctl_env(i),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_DIST_PORT=str(self.ports(i)["dist"]),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),  # never /etc/rabbitmq's
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(d / "pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=f"{self._dist_args()} -start_epmd false"
            f" -choreo_node {self.name(i)}",
        )

    def _save(self) -> None:
        (tmp := self.base_dir / f"{STATE}.tmp").write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.base_dir / STATE)

    def _ours(self, pid: int | None, mark: str) -> bool:
        """Alive, `mark` in its command line and this cluster's id in its environment."""
        if not pid:
            return False
        return (
            procfs.alive(pid)
            and mark in " ".join(procfs.cmdline_or_environ(pid, "cmdline")) + " "
            and f"CHOREO_CLUSTER_ID={self.state['id']}" in procfs.cmdline_or_environ(pid, "environ")
        )

    def pid(self, i: int) -> int | None:
        """Node i's beam.smp while it runs (never a recycled pid: the command line names the
        node)."""
        return (
            pid
            if self._ours(pid := self.state["nodes"].get(str(i)), f"-choreo_node {self.name(i)} ")
            else None
        )

    def app_running(self, i: int) -> bool:
        """Its AMQP listener answers: RabbitMQ opens it once booted and closes it on stop_app."""
        return self.pid(i) is not None and procfs.listening(self.ports(i)["amqp"])

    def _epmd_pid(self) -> int | None:
        return (
            pid if self._ours(pid := self.state["epmd_pid"], f"-port {self.base_port} ") else None
        )

    def strays(self) -> list[int]:
        """Every process with this cluster's id in its environment (an epmd a node
        started, a node's helper)."""
        mark = f"CHOREO_CLUSTER_ID={self.state['id']}"
        return [
            int(p)
            for p in os.listdir("/proc")
            if p.isdigit()
            and int(p) != os.getpid()
            and procfs.alive(int(p))
            and mark in procfs.cmdline_or_environ(int(p), "environ")
        ]

    def _spawn(
        self, argv: list[str], env: dict[str, str], cwd: Path, log: Path
    ) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._children.append(proc)
        return proc

    def _gone(self, pids: list[int], timeout: float, *signals: int) -> bool:
        """Send each signal in turn (0: none, just wait) to what of pids is alive, `timeout` apart,
        until none is; True if none is."""
        for sig in signals or (0,):
            for p in (p for p in pids if sig and procfs.alive(p)):
                with suppress(OSError):
                    os.kill(p, sig)
            deadline = time.monotonic() + timeout
            while any(procfs.alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._children = [c for c in self._children if c.poll() is None]  # reaps those that ended
        return not any(procfs.alive(p) for p in pids)

    def _layout(self) -> None:
        """The folder, the cookie (made once), each node's config, the folder's rabbitmqctl."""
        self.base_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        nodefiles.write_cookie(self.base_dir)
        (self.base_dir / "rabbitmq-env.conf").write_text(
            "# empty: /etc/rabbitmq's is the machine node's\n"
        )
        if self.tls:
            self._tls_layout()
        for i in self.nodes:
            nodefiles.write_node(
                self.folder(i),
                nodefiles.node_conf(self.tag, self.ports(i), self.tls_files if self.tls else None),
            )
        nodefiles.write_ctl_wrapper(self.base_dir / CTL, self.base_dir)
        self._save()

    def _tls_layout(self) -> None:
        """The CA and certificates (made once, see choreo.ops.tlsca) and the distribution
        optfile."""
        files = tlsca.ensure(
            self.tls_files.folder, label=f"choreo cluster {self.tag} {self.state['id'][:8]}"
        )
        nodefiles.write_dist_optfile(files, f"the nodes of {self.base_dir} and rabbitmqctl")

    def _ensure_epmd(self) -> None:
        if self._epmd_pid():
            return
        if procfs.listening(port := self.base_port):
            raise ClusterError(
                f"port {port} (the cluster's epmd) is taken; choose another base port"
            )
        proc = self._spawn(
            [shutil.which("epmd") or "epmd", "-port", str(port), "-address", "127.0.0.1"],
            self.ctl_env(),
            self.base_dir,
            self.base_dir / "epmd.log",
        )
        self.state["epmd_pid"] = proc.pid
        self._save()
        deadline = time.monotonic() + 10
        while not procfs.listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(
                    f"epmd on port {port} did not start; see {self.base_dir / 'epmd.log'}"
                )
            time.sleep(0.05)

    def _launch(self, i: int) -> None:
        """Start node i's VM, not waiting for its boot (a node with data rejoins its cluster by
        itself)."""
        # Only a listener is in the way: a killed node's connections in TIME_WAIT are not
        # (reuseaddr).
        if busy := [f"{k} {p}" for k, p in self.ports(i).items() if procfs.listening(p)]:
            raise ClusterError(
                f"{self.name(i)}: port {', '.join(busy)} is taken by another process"
            )
        proc = self._spawn(
            [str(rabbitmq_bin() / "rabbitmq-server")],
            self._node_env(i),
            self.folder(i),
            self.folder(i) / "log" / "console.log",
        )
        # The script stays, as the parent of the VM: a subshell that execs erl, which execs
        # beam.smp.
        mark, deadline, beam = f"-choreo_node {self.name(i)} ", time.monotonic() + 15, None
        while not beam and proc.poll() is None and time.monotonic() < deadline:
            with suppress(OSError):  # the script may exit meanwhile
                kids = " ".join(
                    Path(t, "children").read_text()
                    for t in Path(f"/proc/{proc.pid}/task").iterdir()
                )
                beam = next(
                    (
                        int(k)
                        for k in kids.split()
                        if mark in " ".join(procfs.cmdline_or_environ(int(k), "cmdline")) + " "
                    ),
                    None,
                )
            time.sleep(0.02)
        if not beam:
            raise ClusterError(f"{self.name(i)} did not start; see {self.logs(i)}")
        self.state["nodes"][str(i)] = beam
        self._save()

    def wait_running(self, i: int, timeout: float = 120) -> None:
        """Until node i has booted (its AMQP listener answers, then `await_startup`), or
        ClusterError."""
        deadline = time.monotonic() + timeout
        while not self.app_running(i):
            if self.pid(i) is None:
                raise ClusterError(
                    f"{self.name(i)} is not running (it exited?); see {self.logs(i)}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{self.name(i)} did not boot within {timeout:.0f}s; see {self.logs(i)}"
                )
            time.sleep(0.2)
        self.ctl("await_startup", node=i, timeout=max(10.0, deadline - time.monotonic()))

    def up(self, timeout: float = 180) -> dict:
        """Start what does not run (a node whose app is stopped gets it started), wait for every
        node, join those not in node 1's cluster yet (fresh ones); returns status(). Idempotent."""
        if not available():
            raise ClusterError(
                f"RabbitMQ is not installed here (no {rabbitmq_bin() / 'rabbitmq-server'} or epmd)"
            )
        self._layout()
        self._ensure_epmd()
        for i in self.nodes:
            if self.pid(i) is None:
                self._launch(i)
            elif not self.app_running(i):
                self.ctl("start_app", node=i, timeout=timeout)
        _each(lambda i: self.wait_running(i, timeout), self.nodes)  # they boot side by side
        seed, joined = self.name(1), self.cluster_status(1)["disk_nodes"]
        fresh = [i for i in self.nodes if self.name(i) not in joined]
        _each(
            lambda i: [self.ctl(verb, node=i, timeout=timeout) for verb in ("stop_app", "reset")],
            fresh,
        )
        for i in fresh:  # one at a time: each join changes the cluster's schema
            self.ctl("join_cluster", seed, node=i, timeout=timeout)
        _each(lambda i: self.ctl("start_app", node=i, timeout=timeout), fresh)
        running = self.cluster_status(1)["running_nodes"]
        if missing := [self.name(i) for i in self.nodes if self.name(i) not in running]:
            raise ClusterError(
                f"not running in {seed}'s cluster: {', '.join(missing)}; logs in {self.base_dir}"
            )
        return self.status()

    def down(self, purge: bool = False, timeout: float = 30) -> list[int]:
        """Stop its nodes (rabbitmqctl stop; SIGKILL after `timeout`), its epmd, then whatever else
        still has its id; `purge` removes the folder too. Returns the pids it ended."""
        if not (self.base_dir / STATE).exists():
            return []

        def stop(i: int) -> list[int]:
            if (pid := self.pid(i)) is None:
                return []
            with suppress(
                subprocess.TimeoutExpired, ClusterError
            ):  # hung, or died meanwhile: SIGKILL below
                self.ctl("stop", node=i, check=False, timeout=timeout)
            self._gone([pid], timeout, 0, signal.SIGKILL)  # its own stop first, SIGKILL if it hangs
            return [pid]

        ended = [p for pids in _each(stop, self.nodes) for p in pids]
        ended += (epmd := [p for p in [self._epmd_pid()] if p])
        self._gone(epmd, 5, signal.SIGTERM, signal.SIGKILL)
        ended += (strays := self.strays())  # whatever else still has its id
        self._gone(strays, 5, signal.SIGTERM, signal.SIGKILL)
        if purge:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        else:
            self.state.update(epmd_pid=None, nodes={})
            self._save()
        return ended

    def target(self, node: int | None = None) -> int:
        """Node `node` if it runs; by default the first whose app runs, else the first that runs."""
        if node is not None:
            if self.pid(node) is None:
                raise ClusterError(f"{self.name(node)} is not running")
            return node
        for ok in (self.app_running, self.pid):
            if found := next((i for i in self.nodes if ok(i)), None):
                return found
        raise ClusterError(
            f"no node of the cluster in {self.base_dir} is running (choreo cluster up)"
        )

    def ctl(
        self, *args: str, node: int | None = None, check: bool = True, timeout: float = 60
    ) -> str:
        """`rabbitmqctl -q ARGS` on one of its own running nodes, with its cookie and epmd."""
        i = self.target(node)
        out = subprocess.run(
            [str(rabbitmq_bin() / "rabbitmqctl"), "-q", "-n", self.name(i), *args],
            env=self.ctl_env(i),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise ClusterError(
                f"rabbitmqctl -n {self.name(i)} {' '.join(args)} failed ({out.returncode}): "
                f"{(out.stderr or out.stdout).strip()[:300]}"
            )
        return out.stdout

    def cluster_status(self, i: int | None = None) -> dict:
        return json.loads(self.ctl("cluster_status", "--formatter", "json", node=i, timeout=30))

    def status(self) -> dict:
        def node(i: int) -> dict:
            pid = self.pid(i)
            members: list[str] = []
            with suppress(
                ClusterError, subprocess.TimeoutExpired, ValueError
            ):  # booting or stopping: sees no one
                members = self.cluster_status(i)["running_nodes"] if pid else []
            return {
                "index": i,
                "name": self.name(i),
                **self.ports(i),
                "pid": pid,
                "running": pid is not None,
                "app_running": self.app_running(i),
                "members": sorted(members),
                "logs": self.logs(i),
            }

        return {
            "dir": str(self.base_dir),
            "tag": self.tag,
            "epmd": {"port": self.base_port, "pid": self._epmd_pid()},
            "nodes": _each(node, self.nodes),
            "urls": self.urls(),
            "ctl": str(self.base_dir / CTL),
            "tls": self.tls_status(),
        }

    def tls_status(self) -> dict:
        """What a client needs to know of the cluster's TLS ({"enabled": False} without)."""
        return nodefiles.tls_status(
            self.tls_files if self.tls else None, [self.ports(i)["amqp"] for i in self.nodes]
        )

    def client_env(
        self, user: str = "guest", password: str = "guest", vhost: str = "/"
    ) -> dict[str, str]:
        """The CHOREO_* settings a choreo stack needs to run on this cluster: its URLs,
        its folder (rabbitmqctl through it) and, with TLS, the CA to verify it by and
        the client certificate."""
        return {
            "CHOREO_BROKER_URL": self.urls(user, password, vhost),
            "CHOREO_BROKER_CLUSTER_DIR": str(self.base_dir),
            **(nodefiles.client_tls_env(self.tls_files) if self.tls else {}),
        }

    def urls(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> str:
        """Every node's AMQP URL (amqps:// with TLS), joined by ";": kombu's failover form
        (broker_url)."""
        auth, path = f"{quote(user, safe='')}:{quote(password, safe='')}", quote(vhost, safe="")
        scheme = "amqps" if self.tls else "amqp"
        return ";".join(
            f"{scheme}://{auth}@127.0.0.1:{self.ports(i)['amqp']}/{path}" for i in self.nodes
        )

    def admin_api(self, i: int | None = None) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.ports(self.target(i))['mgmt']}"

    def queue_info(self, vhost: str, queue: str) -> dict:
        """A queue's name, type, leader, members and online members, as the broker sees them now
        (rabbitmqctl: the management API's figures lag by its statistics interval)."""
        rows = json.loads(
            self.ctl(
                "list_queues",
                "-p",
                vhost,
                "name",
                "type",
                "leader",
                "members",
                "online",
                "--formatter",
                "json",
            )
            or "[]"
        )
        if row := next((r for r in rows if r["name"] == queue), None):
            return row
        raise ClusterError(f"no queue {queue} in vhost {vhost}")

    def kill(self, i: int) -> int:
        """SIGKILL node i's VM (a crash: no goodbye to its peers); returns its pid."""
        pid = self.pid(self.target(i))  # ClusterError when it does not run
        if pid is None:  # it stopped between the two looks
            raise ClusterError(f"{self.name(i)} is not running")
        if not self._gone([pid], 10, signal.SIGKILL):
            raise ClusterError(f"{self.name(i)} (pid {pid}) is still alive 10 s after SIGKILL")
        return pid

    def start(self, i: int, timeout: float = 120) -> None:
        """Start node i again (it rejoins its cluster by itself: its data remembers it)."""
        self._ensure_epmd()
        if self.pid(i) is None:
            self._launch(i)
        self.wait_running(i, timeout)

    def stop_app(self, i: int) -> None:
        self.ctl("stop_app", node=i)

    def start_app(self, i: int) -> None:
        self.ctl("start_app", node=i)
