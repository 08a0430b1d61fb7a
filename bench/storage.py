"""Storage: the bytes each order leaves behind, and a soak that runs longer than every retention
window so the databases' sizes can be watched over time.

    .venv/bin/python bench/storage.py [--orders 20000] [--waves 20] [--window 30]
                                      [--database sqlite|postgresql] [--json FILE]

A private stack (its own vhost, Redis prefix, folders or PostgreSQL databases, like every bench
arm) with the retention windows shortened to `--window` seconds: the dedup window, sent outbox
rows, dead-letter and replay records; the redelivery horizon, the replay window and the retry
ladder are shortened so the dedup window still outlasts them (config/settings.py refuses it
otherwise). Orders of the default mix (every saga path) are placed in waves; after each wave has
ended the audit runs and every service database is measured: its live bytes (SQLite: pages in use,
not the file, which keeps freed pages for reuse; PostgreSQL: every table's size with its indexes
and TOAST) and each table's rows.

It prints a line per wave and, at the end, the figures: bytes retained per order placed (all
time), bytes added per order in the last waves (the steady-state growth: zero once every kind of
record has a window and the windows have passed), and the largest tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from bench.common import log, patched_environ, sandbox  # noqa: E402

POSTGRES = "postgresql://postgres:postgres@127.0.0.1:5432"


def window_env(window: float) -> dict[str, str]:
    """Every retention window `window` seconds; what the dedup window must outlast, shorter."""
    return {
        "CHOREO_DEDUP_WINDOW": str(window),
        "CHOREO_MAX_CLOCK_SKEW": "1",  # one host
        "CHOREO_RETENTION_OUTBOX": str(window),
        "CHOREO_RETENTION_DEAD_LETTERS": str(window),
        "CHOREO_RETENTION_REPLAYS": str(window),
        "CHOREO_REDELIVERY_HORIZON": str(window / 3),
        "CHOREO_DLQ_REPLAY_WINDOW": str(window / 3),
        "CHOREO_RETRY_INITIAL_DELAY": "0.2",
        "CHOREO_RETRY_MAX_DELAY": "1.0",
        "CHOREO_RETENTION_INTERVAL": str(max(1.0, window / 10)),
    }


def table_bytes(settings, service: str) -> dict[str, tuple[int, int]]:
    """{table: (live bytes incl. its indexes, rows)} of one service's database."""
    from sqlalchemy import inspect, text

    from choreo.infra.db import engine_for

    engine = engine_for(settings, service)
    out: dict[str, tuple[int, int]] = {}
    with engine.connect() as conn:
        tables = inspect(conn).get_table_names()
        if engine.dialect.name == "sqlite":
            # dbstat: every b-tree page in use, named by its table or index.
            owner = {
                name: tbl
                for name, tbl in conn.execute(
                    text("SELECT name, tbl_name FROM sqlite_schema WHERE type IN ('table','index')")
                )
            }
            sizes: dict[str, int] = {}
            for name, size in conn.execute(
                text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
            ):
                tbl = owner.get(name, name)
                sizes[tbl] = sizes.get(tbl, 0) + int(size)
        else:
            sizes = {
                name: int(size)
                for name, size in conn.execute(
                    text("SELECT relname, pg_total_relation_size(relid) FROM pg_stat_user_tables")
                )
            }
        for tbl in tables:
            rows = conn.execute(text(f'SELECT COUNT(*) FROM "{tbl}"')).scalar_one()
            out[tbl] = (sizes.get(tbl, 0), int(rows))
    return out


def measure(settings) -> dict[str, dict[str, tuple[int, int]]]:
    from config.settings import SERVICES

    return {service: table_bytes(settings, service) for service in SERVICES}


def total(sizes: dict[str, dict[str, tuple[int, int]]]) -> int:
    return sum(b for tables in sizes.values() for b, _ in tables.values())


def audit_failures(settings) -> list[str]:
    from choreo.ops.audit import run_audit

    return [f"{c.name}: {c.detail}" for c in run_audit(settings) if not c.passed]


def settled_audit(settings, timeout: float = 60.0) -> list[str]:
    """The audit's failures once it is green or `timeout` has passed: an order is terminal
    before its notification is recorded, and a retry may still be on its way."""
    deadline = time.monotonic() + timeout
    while (failures := audit_failures(settings)) and time.monotonic() < deadline:
        time.sleep(1.0)
    return failures


def soak(a: argparse.Namespace) -> dict:
    from choreo.infra.db import dispose_all
    from choreo.ops.scenarios import DEFAULT_MIX, draw_scenarios
    from choreo.ops.stack import Stack, bring_up, process_names
    from choreo.ops.workload import outcomes, publish_orders, terminal_count, wait_terminal
    from config.settings import get_settings

    per_wave = a.orders // a.waves
    doc: dict = {"orders": per_wave * a.waves, "waves": a.waves, "window_s": a.window}
    doc["database"] = a.database
    server = POSTGRES if a.database == "postgresql" else None
    windows = {k.removeprefix("CHOREO_").lower(): v for k, v in window_env(a.window).items()}
    with sandbox("storage", database_server=server, **windows) as sb:
        env = sb.env
        with patched_environ(env):
            get_settings.cache_clear()
            settings = get_settings()
            names = [n for n in process_names(settings) if n == "users" or n.startswith("worker-")]
            stack = Stack(settings, env)
            rows: list[dict] = []
            try:
                bring_up(settings, names, 90, env)
                t0 = time.monotonic()
                placed = 0
                for wave in range(1, a.waves + 1):
                    scenarios = draw_scenarios(per_wave, DEFAULT_MIX, seed=wave)
                    sent = publish_orders(settings, scenarios, seed=None, source="bench")
                    ids = [o for o, _ in sent]
                    states = wait_terminal(settings, ids, timeout=max(120.0, per_wave / 5))
                    placed += len(ids)
                    wrong = sum(r["mismatches"] for r in outcomes(sent, states))
                    wrong += len(ids) - terminal_count(states)
                    failures = settled_audit(settings)
                    sizes = measure(settings)
                    row = {
                        "wave": wave,
                        "elapsed_s": round(time.monotonic() - t0, 1),
                        "orders_placed": placed,
                        "bytes": total(sizes),
                        "not_as_asked": wrong,
                        "audit_failures": failures,
                        "services": {
                            s: {t: list(v) for t, v in tables.items()}
                            for s, tables in sizes.items()
                        },
                    }
                    rows.append(row)
                    log(
                        f"wave {wave}/{a.waves}: {placed} orders, {row['elapsed_s']:.0f} s, "
                        f"{row['bytes'] / 1e6:.2f} MB live, {row['bytes'] / placed:.0f} B/order, "
                        f"{wrong} not as asked, audit {failures or 'green'}"
                    )
            finally:
                for name in reversed(names):
                    stack.stop(name)
                dispose_all()
                get_settings.cache_clear()
    doc["waves_measured"] = rows
    return doc


def windowed_tables() -> set[str]:
    """`service.table` of every table the cleaner keeps to a window (choreo.app.retention)."""
    from choreo.app.retention import kinds_of
    from config.settings import SERVICES

    return {f"{s}.{k.table.name}" for s in SERVICES for k in kinds_of(s)}


def split(row: dict, windowed: set[str]) -> tuple[int, int]:
    """(bytes in tables with a window, bytes in tables kept for ever) of one wave."""
    inside = kept = 0
    for service, tables in row["services"].items():
        for table, (size, _rows) in tables.items():
            if f"{service}.{table}" in windowed:
                inside += size
            else:
                kept += size
    return inside, kept


def figures(doc: dict) -> dict:
    rows = doc["waves_measured"]
    windowed = windowed_tables()
    sides = [split(r, windowed) for r in rows]
    last = rows[-1]
    tail = rows[len(rows) // 2 :]  # the second half: past the first windows
    grown = tail[-1]["bytes"] - tail[0]["bytes"]
    orders_in_tail = tail[-1]["orders_placed"] - tail[0]["orders_placed"]
    tables = sorted(
        ((b, f"{s}.{t}", n) for s, ts in last["services"].items() for t, (b, n) in ts.items() if b),
        reverse=True,
    )
    half = len(rows) // 2
    kept_growth = sides[-1][1] - sides[half][1]
    return {
        "windowed_mb_by_wave": [round(w / 1e6, 3) for w, _ in sides],
        "kept_mb_by_wave": [round(k / 1e6, 3) for _, k in sides],
        "kept_bytes_per_order": kept_growth / orders_in_tail if orders_in_tail else None,
        "bytes_per_order_retained": last["bytes"] / last["orders_placed"],
        "bytes_added_per_order_steady": grown / orders_in_tail if orders_in_tail else None,
        "live_mb_first_last": [rows[0]["bytes"] / 1e6, last["bytes"] / 1e6],
        "largest_tables": [{"table": t, "bytes": b, "rows": n} for b, t, n in tables[:8]],
        "violations": sum(r["not_as_asked"] + len(r["audit_failures"]) for r in rows),
        "orders_per_s_first_last_wave": [
            rows[0]["orders_placed"] / rows[0]["elapsed_s"],
            (rows[-1]["orders_placed"] - rows[-2]["orders_placed"])
            / (rows[-1]["elapsed_s"] - rows[-2]["elapsed_s"])
            if len(rows) > 1
            else None,
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--orders", type=int, default=20_000)
    ap.add_argument("--waves", type=int, default=20)
    ap.add_argument("--window", type=float, default=30.0, help="every retention window, seconds")
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--json", type=Path, help="write every wave's measurements here")
    a = ap.parse_args()
    if a.waves < 2 or a.orders < a.waves:
        ap.error("--waves must be at least 2 and --orders at least --waves")
    doc = soak(a)
    doc["figures"] = f = figures(doc)
    if a.json:
        a.json.write_text(json.dumps(doc, indent=2))
    steady = f["bytes_added_per_order_steady"]
    print(
        f"\nstorage, {doc['orders']} orders in {doc['waves']} waves, windows {a.window:.0f} s, "
        f"{a.database}"
    )
    print(f"  bytes retained per order placed: {f['bytes_per_order_retained']:.0f}")
    print(f"  bytes added per order, second half: {steady:.0f}" if steady is not None else "")
    print(f"  tables with a window, MB by wave: {f['windowed_mb_by_wave']}")
    print(f"  tables kept for ever, MB by wave: {f['kept_mb_by_wave']}")
    if f["kept_bytes_per_order"] is not None:
        print(f"  kept for ever, bytes per order (second half): {f['kept_bytes_per_order']:.0f}")
    first, last = f["live_mb_first_last"]
    print(f"  live size after the first wave {first:.2f} MB, after the last {last:.2f} MB")
    rates = f["orders_per_s_first_last_wave"]
    if rates[1] is not None:
        print(f"  orders/s (wave incl. its audit): first {rates[0]:.1f}, last {rates[1]:.1f}")
    print(f"  violations: {f['violations']}")
    print("  largest tables:")
    for t in f["largest_tables"]:
        print(f"    {t['table']:<36} {t['bytes'] / 1e6:8.2f} MB {t['rows']:>9} rows")
    return 0 if f["violations"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
