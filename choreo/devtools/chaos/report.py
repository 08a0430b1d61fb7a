"""What a chaos run is asked to do (ChaosConfig), what it did and found (ChaosReport), its
journal and its printout."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from choreo.ops.audit import print_report


@dataclass
class ChaosConfig:
    """What a run does; `choreo chaos` fills it from its options."""

    orders: int = 1000
    # Seconds of fault injection at most; longer only while a one-off fault waits its turn (a
    # cluster's stop_app, until a killed node runs again), and then by settle_timeout at most.
    duration: float = 120.0
    kill_every: float = 3.0  # seconds between worker kills
    seed: int | None = None  # None: drawn, then printed so the run can be repeated
    broker_restart: str = "vhost"  # vhost | node (every vhost of the node!) | none
    settle_timeout: float = 300.0
    redis_restart: bool = True
    keep: bool = False  # keep the sandbox's folders (they are also kept when a run fails)
    workdir: Path | None = None  # default: a new temporary folder
    # --cluster: a private three-node RabbitMQ cluster (choreo.devtools.cluster), several workers
    # per domain on a database server; node faults instead of the vhost restart.
    cluster: bool = False
    # With cluster: the folder of a running cluster to use (`choreo cluster up --dir`), left
    # running afterwards with the run's vhost and broker users gone; None: one of its own.
    cluster_dir: Path | None = None
    workers_per_domain: int = 1
    database_server: str = ""
    node_down_seconds: float = 5.0  # a killed node stays down this long
    tls: bool = False  # with cluster: amqps only, TLS between nodes, the run's Redis TLS only
    # A long outage: every worker of one domain (payment, inventory or shipment, drawn) stopped
    # on purpose for this many seconds while orders flow (0: none); it outlasts `deadline`,
    # each step's deadline in the run (the saga's is ten times it), so sagas expire.
    outage: float = 40.0
    outage_domain: str | None = None  # None: drawn by the seed
    deadline: float = 25.0


@dataclass
class ChaosReport:
    """What a run did and found; `as_dict()` is the JSON of `choreo chaos --json`."""

    config: dict
    seed: int
    workdir: str
    actions: list[dict] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    audit: list[dict] = field(default_factory=list)
    mismatches: int = 0  # settled orders whose outcome is not the one their data asked for
    unsettled: list[str] = field(default_factory=list)
    missing: list[str] = field(
        default_factory=list
    )  # published, confirmed, never seen by the order service
    errors: list[str] = field(default_factory=list)
    checks: list = field(
        default_factory=list, repr=False
    )  # the audit's Check objects, for printing

    @property
    def violations(self) -> int:
        """Broken guarantees (a stuck order is one, in the audit's terminal check), wrong outcomes
        and lost orders; an unanswerable check counts once."""
        failed = sum(c["count"] or (0 if c["passed"] else 1) for c in self.audit)
        return failed + self.mismatches + len(self.missing)

    @property
    def passed(self) -> bool:
        return bool(self.audit) and self.violations == 0 and not self.unsettled and not self.errors

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "violations": self.violations,
            "seed": self.seed,
            "workdir": self.workdir,
            "config": self.config,
            "figures": self.figures,
            "injected": self.injected,
            "mismatches": self.mismatches,
            "unsettled": self.unsettled[:50],
            "missing": self.missing[:50],
            "errors": self.errors,
            "actions": self.actions,
            "audit": self.audit,
        }


class Journal:
    """What the harness did, when (seconds since start): printed as it happens, kept for the
    report."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.t0 = time.monotonic()
        self.actions: list[dict] = []
        self.lock = threading.Lock()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def note(self, kind: str, text: str, style: str = "", **data) -> None:
        with self.lock:
            self.actions.append({"t": self.now(), "kind": kind, "text": text, **data})
        self.console.print(f"[dim]{self.now():7.1f}s[/dim] [{style or 'bold'}]{kind:<14}[/] {text}")


def print_summary(console: Console, report: ChaosReport, kept: bool, workdir: Path) -> None:
    f = report.figures
    table = Table(title="chaos figures")
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    rows = [
        ("orders placed", f.get("orders_placed")),
        ("terminal", ", ".join(f"{k}: {v}" for k, v in sorted(f.get("terminal", {}).items()))),
        ("unsettled", f.get("unsettled")),
        (
            "wrong outcome (settled orders) / lost orders",
            f"{report.mismatches} / {len(report.missing)}",
        ),
        ("violations", report.violations),
        (
            "kills (worker / pool child)",
            "{kill_worker} / {kill_child}".format(**f["kills"]) if "kills" in f else None,
        ),
        ("processes that died on their own", f.get("unexpected_exits")),
        (
            "broker restarts / redis restarts",
            f"{f.get('broker_restarts')} / {f.get('redis_restarts')}",
        ),
        *(
            [
                (
                    "node faults",
                    "\n".join(
                        f"{x['fault']} node {x['node']}"
                        + (f" (leader of {x['queue']})" if x.get("queue") else "")
                        + (
                            f"; new leader seen after {x['new_leader_after_s']}s"
                            if "new_leader_after_s" in x
                            else ""
                        )
                        + f"; leaders moved {x.get('leaders_moved')}; "
                        f"next saga finished after {x.get('pause_seconds')}s"
                        + "".join(
                            f"; {w} {v['was_on']} -> {v['reconnected_to']} "
                            f"after {v['reconnected_after_s']}s, "
                            f"{v['processed_after']} processed after"
                            for w, v in x.get("workers_failed_over", {}).items()
                        )
                        for x in f["node_faults"]
                    ),
                )
            ]
            if f.get("node_faults")
            else []
        ),
        *(
            [
                (
                    "work per worker (messages handled)",
                    ", ".join(f"{k}: {v}" for k, v in f["handled_by_worker"].items()),
                )
            ]
            if f.get("handled_by_worker")
            else []
        ),
        *(
            [
                (
                    "outage / sagas expired / late answers undone",
                    "{domain} for {seconds:.0f}s at {t:.0f}s".format(**f["outage"])
                    + f" / {f.get('sagas_expired')} / {f.get('late_answers_compensated')}",
                )
            ]
            if f.get("outage")
            else []
        ),
        ("injected", ", ".join(f"{k}: {v}" for k, v in sorted(report.injected.items()))),
        (
            "duplicates absorbed (counters / logs)",
            f"{f.get('duplicates_absorbed')} / {f.get('duplicates_absorbed_logged')}",
        ),
        ("retries", f.get("retries")),
        ("relayed outbox rows", f.get("relayed_outbox_rows")),
        (
            "dead-lettered (DLQ messages)",
            "\n".join(f"{n}× {r}" for r, n in f.get("dlq_by_reason", {}).items())
            or f.get("dlq_messages"),
        ),
        (
            "dead_letters rows",
            "\n".join(f"{n}× {r}" for r, n in f.get("dead_letter_rows_by_reason", {}).items())
            or f.get("dead_letter_rows"),
        ),
        (
            "fault injection / time to settle",
            f"{f.get('injection_seconds')}s / {f.get('settle_seconds')}s",
        ),
    ]
    for name, value in rows:
        table.add_row(name, "" if value is None else str(value))
    console.print(table)
    if report.checks:
        print_report(report.checks, console)
    for e in report.errors:
        console.print(f"[red]error:[/red] {e}")
    if report.unsettled:
        console.print(
            f"[red]{len(report.unsettled)} order(s) never settled[/red], "
            f"e.g. {report.unsettled[:5]}"
        )
    verdict = "[green]PASSED[/green]" if report.passed else "[red]FAILED[/red]"
    where = f"; sandbox kept in {workdir}" if kept else ""
    console.print(f"chaos {verdict}: {report.violations} violation(s), seed {report.seed}{where}")
