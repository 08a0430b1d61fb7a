"""Profile choreo's workers with py-spy during a throughput run, and summarise the stacks.

py-spy is not a dependency of choreo: install it anywhere (e.g. `python3 -m venv /tmp/pyspy &&
/tmp/pyspy/bin/pip install py-spy`) and pass its path with --py-spy.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

from bench.common import children, log

ROOT = Path(__file__).resolve().parent.parent

FRAME_RE = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def spy_hook(py_spy: str, out_dir: Path, domains: list[str], rate: int = 100, idle: bool = False):
    """A during_throughput hook for run_choreo: py-spy record on each domain's worker (and pool
    children)."""

    def start(stack):
        procs = []
        for d in domains:
            parent = stack.pid(f"worker-{d}")
            kids = children(parent)
            for label, pid in [
                (f"{d}-parent", parent),
                *((f"{d}-child{i}", k) for i, k in enumerate(kids)),
            ]:
                out = out_dir / f"pyspy-{label}.txt"
                cmd = [
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    str(rate),
                    "--nonblocking",
                    *(["--idle"] if idle else []),
                    "-o",
                    str(out),
                ]
                procs.append(
                    (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out)
                )
        log(f"py-spy recording {len(procs)} process(es) into {out_dir}")

        def stop():
            for p, _ in procs:
                p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            for p, _ in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            log("py-spy stopped")

        return stop

    return start


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        frames, _, n = line.rpartition(" ")
        if not n.isdigit():  # a frame name with spaces and no count: not a sample line
            continue
        stacks.append((frames.split(";"), int(n)))
    return stacks


def _key(frame: str) -> str:
    m = FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip()
    f = m.group("file")
    f = re.sub(r"^.*/site-packages/", "", f)
    f = re.sub(rf"^{re.escape(str(ROOT))}/", "", f)
    f = re.sub(r"^.*/lib/python3\.\d+/", "stdlib/", f)
    return f"{m.group('fn')} ({f})"


def summarise(path: Path, top: int = 40, thread_filter: str | None = None) -> dict:
    stacks = parse(path)
    if thread_filter:
        stacks = [(s, n) for s, n in stacks if thread_filter in s[0]]
    total = sum(n for _, n in stacks)
    incl: Counter = Counter()
    self_: Counter = Counter()
    for frames, n in stacks:
        keys = (
            [_key(f) for f in frames[1:]]
            if frames and frames[0].startswith(("process", "thread", "Thread"))
            else [_key(f) for f in frames]
        )
        for k in set(keys):
            incl[k] += n
        if keys:
            self_[keys[-1]] += n
    by_package: Counter = Counter()
    for k, n in self_.items():
        by_package[_package(k)] += n
    # choreo's frames below the entry points (the CLI's frames are on every stack).
    ours = [(k, n) for k, n in incl.most_common() if _package(k) in OWN and n < 0.9 * total]
    pct = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "file": str(path),
        "samples": total,
        "by_package": [(k, n, pct(n)) for k, n in by_package.most_common(top)],
        "own_inclusive": [(k, n, pct(n)) for k, n in ours[:top]],
        "inclusive": [(k, n, pct(n)) for k, n in incl.most_common(top)],
        "self": [(k, n, pct(n)) for k, n in self_.most_common(top)],
    }


OWN = {"choreo", "tasks", "consumers", "models", "config"}


def _package(key: str) -> str:
    """'send_packed_command (redis/connection.py:1349)' -> 'redis'; stdlib keeps its module."""
    m = re.search(r"\(([^()]*)\)$", key)
    path = m.group(1) if m else key
    parts = path.split("/")
    return "/".join(parts[:2]) if parts[0] == "stdlib" else parts[0].split(":")[0]


def print_summary(s: dict, top: int = 40) -> None:
    print(f"\n== {s['file']}  ({s['samples']} samples)")
    print("  where the time is spent (self samples by package):")
    for k, _n, pct in s["by_package"][:12]:
        print(f"   {pct:5.1f}%  {k}")
    print("  choreo's own functions (inclusive):")
    for k, _n, pct in s["own_inclusive"][: top // 2]:
        print(f"   {pct:5.1f}%  {k}")
    print("  self:")
    for k, _n, pct in s["self"][: top // 2]:
        print(f"   {pct:5.1f}%  {k}")


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        print_summary(summarise(Path(p)))


def tree(path: Path, root: str, depth: int = 3, min_pct: float = 1.0) -> None:
    """Print the call tree below the first frame whose key contains `root` (percent of all
    samples)."""
    stacks = parse(path)
    total = sum(n for _, n in stacks)
    node: dict = {}
    for frames, n in stacks:
        keys = [_key(f) for f in frames]
        idx = next((i for i, k in enumerate(keys) if root in k), None)
        if idx is None:
            continue
        cur = node
        for k in keys[idx : idx + depth + 1]:
            ent = cur.setdefault(k, [0, {}])
            ent[0] += n
            cur = ent[1]

    def show(d: dict, indent: int) -> None:
        for k, (n, sub) in sorted(d.items(), key=lambda kv: -kv[1][0]):
            if 100 * n / total < min_pct:
                continue
            print(f"{'  ' * indent}{100 * n / total:5.1f}%  {k}")
            show(sub, indent + 1)

    print(f"\n== tree under '{root}' in {path} ({total} samples)")
    show(node, 0)
