"""Shared bench plumbing: an isolated sandbox per measurement, /proc sampling, stats.

Every measurement gets its own RabbitMQ vhost, Redis key prefix and temp folder, all removed
afterwards. Processes are started by us, tracked by pid and stopped by pid only.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from choreo.devtools.sandbox import SHARED_REDIS as REDIS_URL
from choreo.devtools.sandbox import Sandbox
from choreo.ops.stack import children, free_port, rabbitmqctl  # noqa: F401 (free_port: for the arms)

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextmanager
def sandbox(tag: str, database_server: str | None = None, **options):
    """One measurement's private vhost, Redis key prefix and folder (choreo.devtools.sandbox), and
    its own PostgreSQL databases when `database_server` is given; all removed after. `options`:
    Sandbox's (cluster_dir) and further settings (workers_per_domain)."""
    sb = Sandbox(f"bench-{tag}", database_server=database_server or "", **options)
    try:
        yield sb.open()
    finally:
        for problem in sb.close():
            log(f"cleanup: {problem}")


@contextmanager
def patched_environ(env: dict[str, str]):
    """Set env vars for the duration (the bench process reads the same settings as its workers)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of pid (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / CLK_TCK


def busy_cores(window: float = 2.0) -> float:
    a = machine_busy_seconds()
    time.sleep(window)
    return (machine_busy_seconds() - a) / window


def wait_quiet(threshold: float, max_wait: float, window: float = 2.0) -> dict:
    """Wait until the machine's busy cores (others' work: nothing of ours runs now) drop below
    threshold."""
    t0 = time.monotonic()
    seen = []
    while True:
        b = busy_cores(window)
        seen.append(round(b, 2))
        if b < threshold:
            return {"quiet": True, "busy_cores": b, "waited_s": round(time.monotonic() - t0, 1)}
        if time.monotonic() - t0 > max_wait:
            log(
                f"machine still busy ({b:.2f} cores used by others) after {max_wait:.0f}s; "
                "measuring anyway"
            )
            return {
                "quiet": False,
                "busy_cores": b,
                "waited_s": round(time.monotonic() - t0, 1),
                "samples": seen[-10:],
            }


def pss_kb(pid: int) -> int | None:
    """Proportional set size: shared pages (fork copy-on-write) split between the sharers."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def broker_pid() -> int | None:
    try:
        for line in rabbitmqctl("status", check=False).splitlines():
            if line.strip().startswith("OS PID:"):
                return int(line.split(":", 1)[1])
    except Exception:
        return None
    return None


def redis_pid() -> int | None:
    try:
        import redis

        c = redis.Redis.from_url(REDIS_URL)
        pid = int(c.info("server")["process_id"])
        c.close()
        return pid
    except Exception:
        return None


class ProcSampler:
    """Samples RSS of tracked processes (roots + their children) and CPU between mark() calls.

    roots: {label: pid}. Children (Celery pool processes) are found at every sample, so a
    replaced pool child is counted too. `external` pids (broker, redis) are read for CPU only.
    """

    def __init__(
        self,
        roots: dict[str, int],
        external: dict[str, int | None] | None = None,
        interval: float = 0.5,
    ) -> None:
        self.roots = roots
        self.external = {k: v for k, v in (external or {}).items() if v}
        self.interval = interval
        self.peak_rss_kb: dict[int, int] = {}
        self.hwm_kb: dict[int, int] = {}
        self.pss_kb: dict[int, int] = {}
        self.role: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pids(self) -> dict[int, str]:
        out = {}
        for label, pid in self.roots.items():
            out[pid] = f"{label}"
            for k in children(pid):
                out[k] = f"{label}/child"
        return out

    def sample(self) -> None:
        for pid, role in self.pids().items():
            self.role[pid] = role
            m = mem_kb(pid)
            if "VmRSS" in m:
                self.peak_rss_kb[pid] = max(self.peak_rss_kb.get(pid, 0), m["VmRSS"])
            if "VmHWM" in m:
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), m["VmHWM"])

    def cpu(self) -> dict:
        pids = self.pids()
        procs = {pid: cpu_seconds(pid) for pid in pids}
        ext = {k: cpu_seconds(p) for k, p in self.external.items()}
        return {
            "t": time.monotonic(),
            "procs": {p: c for p, c in procs.items() if c is not None},
            "ext": ext,
            "roles": pids,
            "machine": machine_busy_seconds(),
            "self": time.process_time(),
        }

    @staticmethod
    def cpu_delta(a: dict, b: dict) -> dict:
        # a process that appeared between the marks counts from zero; one that vanished is lost
        per_role: dict[str, float] = {}
        for p, c in b["procs"].items():
            role = b["roles"].get(p, "?")
            per_role[role] = round(per_role.get(role, 0.0) + c - a["procs"].get(p, 0.0), 2)
        workers = sum(per_role.values())
        ext = {
            k: (b["ext"][k] - a["ext"][k])
            if a["ext"].get(k) is not None and b["ext"].get(k) is not None
            else None
            for k in b["ext"]
        }
        wall = b["t"] - a["t"]
        machine = b["machine"] - a["machine"]
        ours = workers + sum(v for v in ext.values() if v) + (b["self"] - a["self"])
        return {
            "wall": wall,
            "workers": workers,
            **{f"{k}": v for k, v in ext.items()},
            "bench_process": round(b["self"] - a["self"], 2),
            "per_role": per_role,
            "machine_busy_cores": round(machine / wall, 2),
            # CPU used by processes that are not part of this measurement (another job on the box);
            # the broker's figure includes other vhosts' traffic, so this can undercount.
            "foreign_cores": round(max(0.0, machine - ours) / wall, 2),
        }

    def start(self) -> ProcSampler:
        def loop():
            while not self._stop.wait(self.interval):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=loop, daemon=True, name="proc-sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.sample()
        for pid in self.pids():
            v = pss_kb(pid)
            if v is not None:
                self.pss_kb[pid] = v
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    def memory(self) -> dict:
        per = [
            {
                "pid": p,
                "role": self.role.get(p, "?"),
                "peak_rss_mb": round(self.peak_rss_kb.get(p, 0) / 1024, 1),
                "vmhwm_mb": round(self.hwm_kb.get(p, 0) / 1024, 1),
                "pss_end_mb": round(self.pss_kb[p] / 1024, 1) if p in self.pss_kb else None,
            }
            for p in sorted(self.peak_rss_kb)
        ]
        pss = [x["pss_end_mb"] for x in per if x["pss_end_mb"] is not None]
        return {
            "max_vmhwm_mb": max((x["vmhwm_mb"] for x in per), default=None),
            "total_pss_mb": round(sum(pss), 1) if pss else None,
            "max_rss_mb": max((x["peak_rss_mb"] for x in per), default=None),
            "processes": len(per),
            "per_process": per,
        }


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM our process, wait, then SIGKILL it and the children it had (all by pid)."""
    kids = children(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:
            if not Path(f"/proc/{pid}").exists():
                break
        time.sleep(0.1)
    for p in [pid, *kids]:
        with suppress(OSError):
            os.kill(p, signal.SIGKILL)
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# --- stats ---------------------------------------------------------------------------------


def percentiles(values: list[float], ps=(50, 95, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in ps}
    xs = sorted(values)
    out = {}
    for p in ps:
        # nearest-rank
        k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
        out[f"p{p}"] = xs[k]
    return out


def summary(values: list[float | None]) -> dict:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


class Pacer:
    """Open-loop arrivals at a fixed rate: the i-th send is due at t0 + i/rate."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.monotonic()
        self.i = 0
        self.max_lag = 0.0

    def wait(self) -> None:
        due = self.t0 + self.i / self.rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            self.max_lag = max(self.max_lag, now - due)
        self.i += 1
