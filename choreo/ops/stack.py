"""Starting and stopping choreo's processes by pid file: one code path for the CLI, tests and
chaos.

A process stopped on purpose (`choreo stop NAME`) is *held*: a file `run_dir/NAME.stopped`,
written before the stop, says so. Whatever restarts processes that died (the chaos harness,
`wait_consuming(start=...)`) does it by `Stack.restart`, which leaves a held one alone; an
explicit `Stack.start` (`choreo start NAME`, `choreo up`) ends the hold, like `docker compose
stop` and `start`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from choreo.app.bootstrap import prepare
from choreo.devtools.cluster import Cluster
from choreo.messaging import access
from choreo.messaging.admin import BrokerAdmin
from choreo.ops import procfs
from config.settings import DOMAINS, Settings
from consumers.registry import topology

# Every process the stack starts runs `python -m choreo ...`; its command line says so.
MARK = " -m choreo "
# run_dir/<name> + this: the process was stopped on purpose and stays stopped (Stack.held).
HELD_SUFFIX = ".stopped"


def worker_name(domain: str, index: int = 1) -> str:
    """worker-<domain> for a domain's first worker, worker-<domain>-<i> for each further one."""
    return f"worker-{domain}" if index == 1 else f"worker-{domain}-{index}"


def worker_of(name: str) -> tuple[str, int] | None:
    """(domain, index) of a worker's process name; None for any other process."""
    if not name.startswith("worker-"):
        return None
    domain, _, index = name.removeprefix("worker-").partition("-")
    return domain, int(index) if index else 1


def process_names(settings: Settings | None = None) -> list[str]:
    domains = settings.domains if settings is not None else DOMAINS
    count = settings.workers_per_domain if settings is not None else 1
    workers = [worker_name(d, i) for d in domains for i in range(1, count + 1)]
    return ["users", *workers, "monitor", "flower"]


def argv_for(name: str) -> list[str]:
    base = [sys.executable, "-m", "choreo"]
    worker = worker_of(name)
    if worker:
        domain, index = worker
        return [*base, "worker", domain, *(["--index", str(index)] if index > 1 else [])]
    return [*base, name]


def _cmdline(pid: int) -> str:
    return " ".join(procfs.cmdline_or_environ(pid, "cmdline"))


def is_ours(pid: int) -> bool:
    """Alive and a choreo process (never a recycled pid of someone else's)."""
    return runs_with(pid, MARK)


def runs_with(pid: int, marker: str) -> bool:
    """Alive, and `marker` is in its command line: the pid file's process, not a recycled pid."""
    return alive(pid) and marker in _cmdline(pid)


def await_exec(proc: subprocess.Popen, marker: str, timeout: float = 5.0) -> None:
    """Wait (bounded) until a process just started shows `marker` in its command line, or exits.
    Popen returns once exec has begun, but the kernel sets the new command line a moment later:
    until then `runs_with` would not recognise it, and a start or stop right after would think
    nothing of ours runs (a second start ran a second Prometheus)."""
    deadline = time.monotonic() + timeout
    while not runs_with(proc.pid, marker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


alive = procfs.alive  # alive and not a zombie (callers import it from here)


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on loopback right now (for a sandbox's user service, Flower, Redis)."""
    return free_port_block(1) + 1


def free_port_block(size: int, tries: int = 200) -> int:
    """A base port such that base+1 .. base+size are all free on loopback right now (a
    sandbox's health listeners: health_port_base + each worker's offset; a private cluster).
    Below the kernel's ephemeral range: an outgoing connection never takes such a port, so a
    process killed and started again (a broker node, Redis, a worker) finds its port free."""
    import random

    low, high = 10000, _ephemeral_low() - size - 1
    if high <= low:  # an unusual kernel range that starts low: above it instead
        low, high = 61000, 65535 - size
    for _ in range(tries):
        base = random.randrange(low, high)
        socks = []
        try:
            for port in range(base + 1, base + size + 1):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {size} free ports found on loopback")


def rabbitmqctl(*args: str, check: bool = True, timeout: float = 120, cluster_dir: str = "") -> str:
    """Run `rabbitmqctl -q ARGS` on this machine's node, or with `cluster_dir` (settings.
    broker_cluster_dir) on a running node of that private cluster, with its cookie and epmd;
    with `check`, fail loudly on an error."""
    if cluster_dir:
        return Cluster.open(cluster_dir).ctl(*args, check=check, timeout=timeout)
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout
    )
    if check and out.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()[:300]}"
        )
    return out.stdout


def children(pid: int) -> list[int]:
    """Direct children of pid (Celery's pool processes for a worker)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            out.extend(int(x) for x in text)
    except OSError:
        pass
    return out


class Stack:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = {**os.environ, **(env or {})}
        # Every process gets the saga mode explicitly: none guesses it from a file.
        self.env["CHOREO_SAGA_MODE"] = settings.saga_mode
        # Let workers cache their own modules' bytecode: six processes compiling the same
        # sources at every start is most of a cold start on two cores.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.run_dir = Path(settings.run_dir)
        self.log_dir = self.run_dir / "logs"

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def stopped_file(self, name: str) -> Path:
        """The mark of a process stopped on purpose (`choreo stop NAME`)."""
        return self.run_dir / f"{name}{HELD_SUFFIX}"

    def held(self, name: str) -> bool:
        """Stopped on purpose, to stay stopped until started on purpose: no restarter starts it."""
        return self.stopped_file(name).exists()

    def hold(self, name: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stopped_file(name).write_text(f"stopped on purpose at {time.time():.0f}\n")

    def release(self, name: str) -> None:
        self.stopped_file(name).unlink(missing_ok=True)

    def held_names(self) -> list[str]:
        """Every process held now (whatever the stack's shape)."""
        if not self.run_dir.is_dir():
            return []
        return sorted(
            m.name.removesuffix(HELD_SUFFIX) for m in self.run_dir.glob(f"*{HELD_SUFFIX}")
        )

    def release_all(self) -> list[str]:
        """End every hold (a full bring-up, a `choreo down`); the names that were held."""
        names = self.held_names()
        for name in names:
            self.release(name)
        return names

    def pid(self, name: str) -> int | None:
        """The recorded pid, only if that process is alive and is ours (no stale-pid accidents)."""
        try:
            pid = int(self.pidfile(name).read_text().strip())
        except (OSError, ValueError):
            return None
        if is_ours(pid):
            return pid
        return None

    def start(self, name: str) -> int:
        """Start `name` on purpose (an operator, a bring-up, a test): ends a hold. Its pid
        (the running one's if it runs already)."""
        self.release(name)
        return self._launch(name)

    def restart(self, name: str) -> int | None:
        """A restarter's start (a process found dead, a worker the chaos harness killed): None,
        and nothing runs, while `name` is held. The mark is looked at again once started: an
        operator's `choreo stop` that wrote it meanwhile finds either this process by its pid
        file or, here, its own mark, so nothing is left running either way."""
        if self.held(name):
            return None
        pid = self._launch(name)
        if self.held(name):
            self.stop(name)
            return None
        return pid

    def stop_on_purpose(self, name: str, timeout: float = 15.0) -> int | None:
        """Hold `name`, then stop it (SIGTERM, SIGKILL after `timeout`): `choreo stop NAME`. The
        mark comes first, so a restarter racing the stop sees it. The pid stopped, None if it
        was not running (it is held all the same)."""
        self.hold(name)
        pid = self.pid(name)
        self.stop(name, timeout)
        return pid

    def _launch(self, name: str) -> int:
        existing = self.pid(name)
        if existing:
            return existing
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The process keeps its own copy of the log's descriptor: ours closes once it started.
        with open(self.logfile(name), "ab") as log:
            proc = subprocess.Popen(
                argv_for(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        self.pidfile(name).write_text(f"{proc.pid}\n")
        await_exec(proc, MARK)
        return proc.pid

    def stop(self, name: str, timeout: float = 15.0) -> bool:
        pid = self.pid(name)
        if pid is None:
            self.pidfile(name).unlink(missing_ok=True)
            return False
        kids = children(pid)
        with suppress(ProcessLookupError):  # gone meanwhile (a racing stop, a crash)
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        # Still alive after the grace period: the worker and the pool children it had.
        for p in [pid, *kids]:
            if alive(p):
                with suppress(OSError):
                    os.kill(p, signal.SIGKILL)
        self.pidfile(name).unlink(missing_ok=True)
        return True

    def kill(self, name: str, children_too: bool = True) -> list[int]:
        """SIGKILL a process of ours (and its pool children): the chaos harness's hammer."""
        pid = self.pid(name)
        if pid is None:
            return []
        victims = [pid, *(children(pid) if children_too else [])]
        for p in victims:
            with suppress(OSError):
                os.kill(p, signal.SIGKILL)
        # SIGKILL is delivered asynchronously: wait until they are gone, so a restart right
        # after does not mistake a dying process for a running one.
        deadline = time.monotonic() + 10
        while any(alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.02)
        return victims

    def running(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in process_names(self.settings)}


def _consumers_wanted(settings: Settings, names: list[str], running: set[str]) -> dict[str, int]:
    """Queue -> consumers it must have: one per worker of its domain that is in `names` or in
    `running` (a second worker started beside a running first one is waited for too)."""
    wanted: dict[str, int] = {}
    domains = {worker[0] for worker in map(worker_of, names) if worker}
    for name in set(names) | running:
        worker = worker_of(name)
        if worker and worker[0] in domains:
            queue = f"{settings.namespace}.{worker[0]}"
            wanted[queue] = wanted.get(queue, 0) + 1
    return wanted


def wait_consuming(
    settings: Settings,
    stack: Stack,
    names: list[str],
    timeout: float,
    start: Callable[[str], int | None] | None = None,
) -> None:
    """Until every worker among `names` has a consumer on its queue and every one of `names`
    runs; with `start`, (re)start by it what is not running meanwhile. A process held (stopped
    on purpose, `choreo stop`) is neither waited for nor started. RuntimeError on timeout."""
    deadline = time.monotonic() + timeout
    running = {n for n in process_names(settings) if stack.pid(n)}
    while True:
        # Held looked at every round: an operator may stop a process on purpose meanwhile.
        wanted_names = [n for n in names if not stack.held(n)]
        wanted = _consumers_wanted(
            settings, wanted_names, {n for n in running if not stack.held(n)}
        )
        # A connection per look: the broker may have dropped the last one (chaos restarts it).
        with BrokerAdmin(settings) as admin:
            consumers = {q["name"]: q["consumers"] for q in admin.queue_stats()}
        idle = [q for q, n in wanted.items() if (consumers.get(q) or 0) < n]
        dead = [n for n in wanted_names if stack.pid(n) is None]
        if not idle and not dead:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"stack not ready after {timeout:.0f}s: no consumer on {idle or '-'}, "
                f"not running: {dead or '-'} (logs in {stack.log_dir})"
            )
        if start is not None:
            for name in dead:
                start(name)
        time.sleep(0.5)


def bring_up(
    settings: Settings, names: list[str], timeout: float = 90.0, env: dict[str, str] | None = None
) -> Stack:
    """Tables, broker users and topology first, then start `names` (those not already
    running) and wait until every worker consumes: `choreo up`, the e2e tests and the
    bench all start this way."""
    prepare(settings)
    access.setup(
        settings, topology(settings)
    )  # the users, their grants and the topology: as the bootstrap user
    stack = Stack(settings, env)
    for name in names:
        stack.start(name)
    wait_consuming(settings, stack, names, timeout)
    return stack
