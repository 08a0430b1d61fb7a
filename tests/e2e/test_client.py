"""The users' own day, against a real stack: scripts read `--json` output with a JSON parser,
`choreo place` places a file of their own orders (or, with a bad line, none of it), the Python
client places and waits, `--mix all` runs every documented path, and a refused order says why."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, select

from tests.helpers import queues_idle, settled, sqlite_pass_only

pytestmark = pytest.mark.e2e
DOCS = Path(__file__).resolve().parents[2] / "docs"
ORDER = {
    "customer_id": "cust-7",
    "items": [{"sku": "SKU-RED", "qty": 2}, {"sku": "SKU-GREEN", "qty": 1}],
    "card_token": "tok_visa",
    "address": "1 Main Street, Springfield",
}


def choreo(*args: str, stdin: str | None = None, columns: int | None = None, check: bool = True):
    env = {**os.environ, **({"COLUMNS": str(columns)} if columns else {})}
    out = subprocess.run(
        [sys.executable, "-m", "choreo", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    if check:
        assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])
    return out


def choreo_json(*args: str, stdin: str | None = None) -> dict | list:
    """A command's stdout, which must be one JSON document and nothing else."""
    return json.loads(choreo(*args, "--json", stdin=stdin).stdout)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}"


def place_order_rows(settings, order_ids) -> dict[str, int]:
    """How many place_order messages the order service handled, per order."""
    from choreo.infra.db import engine_for
    from models.tables import Inbox

    with Session(engine_for(settings, "order")) as s:
        rows = s.exec(
            select(Inbox.order_id).where(
                Inbox.type == "place_order", Inbox.order_id.in_(list(order_ids))
            )
        ).all()
    return {o: rows.count(o) for o in order_ids}


@pytest.fixture(scope="module")
def mixed(settings, stack):
    """`choreo enqueue --mix all --json`, waiting: two orders of each of the eight scenarios."""
    return choreo_json("enqueue", "-n", "16", "--mix", "all", "--timeout", "120")


def test_enqueue_mix_all_runs_every_documented_path_as_expected(mixed):
    from choreo.ops.scenarios import SCENARIOS
    from choreo.ops.workload import expected_by_scenario

    assert len(SCENARIOS) == 8 and {"price_mismatch", "unknown_sku"} <= set(SCENARIOS)
    expected = expected_by_scenario()
    got = {o["order_id"]: (o["scenario"], (o["state"], o["reason"])) for o in mixed["orders"]}
    assert sorted(s for s, _ in got.values()) == sorted(SCENARIOS * 2)
    assert {o: end for o, (_, end) in got.items()} == {o: expected[s] for o, (s, _) in got.items()}
    assert mixed["mismatches"] == 0


def test_the_audit_accepts_every_path_of_the_mix(settings, mixed):
    from choreo.ops.audit import run_audit

    ours = {o["order_id"] for o in mixed["orders"]}
    checks = run_audit(settings)
    assert not [c.name for c in checks if c.error]
    problems = {c.name: {o: why for o, why in c.problems.items() if o in ours} for c in checks}
    assert not {name: p for name, p in problems.items() if p}, problems


def test_enqueue_no_wait_json_gives_the_ids_it_placed(settings, stack):
    doc = choreo_json("enqueue", "-n", "3", "--mix", "completed=1,declined=1", "--no-wait")
    assert sorted(doc) == ["orders"]
    ids = [o["order_id"] for o in doc["orders"]]
    assert len(set(ids)) == 3 and {o["scenario"] for o in doc["orders"]} <= {
        "completed",
        "declined",
    }
    states = settled(settings, ids)
    assert {states[o][0] for o in ids} <= {"COMPLETED", "CANCELLED"}


def test_place_reads_the_users_own_orders_and_waits_for_them(settings, stack, tmp_path):
    mine = unique("shop")
    lines = [
        json.dumps({**ORDER, "order_id": mine}),
        "",
        json.dumps({**ORDER, "card_token": "tok_declined"}),
    ]
    doc = choreo_json("place", "-", "--wait", stdin="\n".join(lines) + "\n")
    (first, second) = doc["orders"]
    assert first == {"order_id": mine, "state": "COMPLETED", "reason": None}
    assert second["order_id"].startswith("ord-")
    assert (second["state"], second["reason"]) == ("CANCELLED", "payment_declined")
    # Without --json: the ids, one per line, for `xargs` and friends.
    path = tmp_path / "more.jsonl"
    path.write_text(json.dumps(ORDER) + "\n" + json.dumps(ORDER) + "\n")
    ids = choreo("place", str(path)).stdout.split()
    assert len(ids) == 2 and all(re.fullmatch(r"ord-[0-9a-f]{16}", o) for o in ids)
    assert settled(settings, ids) == {o: ("COMPLETED", None) for o in ids}


def test_place_with_a_bad_line_says_which_and_places_nothing_of_the_file(settings, stack):
    ids = [unique("all-or-nothing") for _ in range(3)]
    good = [json.dumps({**ORDER, "order_id": o}) for o in ids]
    bad = json.dumps({**ORDER, "order_id": ids[1], "items": [{"sku": "SKU-RED", "qty": 0}]})
    out = choreo("place", "-", "--json", stdin="\n".join([good[0], bad, good[2]]), check=False)
    assert out.returncode == 2 and out.stdout == ""
    assert "line 2: items.0.qty: Input should be greater than 0" in out.stderr
    assert "1 bad line(s) in <stdin>: nothing was placed" in out.stderr
    # The fixed file places all three, each exactly once: the refused run published nothing.
    doc = choreo_json("place", "-", "--wait", stdin="\n".join(good))
    assert [o["order_id"] for o in doc["orders"]] == ids
    assert {o["state"] for o in doc["orders"]} == {"COMPLETED"}
    queues_idle(settings)
    assert place_order_rows(settings, ids) == {o: 1 for o in ids}


def test_the_manual_s_python_client_places_and_waits(settings, stack, capsys):
    text = (DOCS / "client.md").read_text()
    block = re.search(
        r"<!-- python-client-example:start -->\s*```python\n(.*?)```\s*"
        r"<!-- python-client-example:end -->",
        text,
        re.S,
    )
    assert block, "docs/client.md lost its Python client example"
    batch = unique("batch")
    # `my_orders` is the reader's own list; the block is run as written.
    scope = {"my_orders": [ORDER, {**ORDER, "card_token": "tok_declined"}]}
    exec(compile(block.group(1).replace("shop-", f"{batch}-"), "client.md", "exec"), scope)
    order_id, printed = scope["order_id"], capsys.readouterr().out.split()
    assert printed == [order_id, "COMPLETED", str(2 * 1299 + 799)]
    assert scope["details"]["state"] == "COMPLETED" and scope["details"]["payment"]["charge"]
    assert scope["ids"] == [f"{batch}-0", f"{batch}-1"]
    assert {o: tuple(out) for o, out in scope["outcomes"].items()} == {
        f"{batch}-0": ("COMPLETED", None),
        f"{batch}-1": ("CANCELLED", "payment_declined"),
    }


def test_the_python_client_refuses_a_bad_order_and_says_what_it_lacks(settings, stack):
    from choreo import client

    no_card = {k: v for k, v in ORDER.items() if k != "card_token"}
    with (
        client.Client(settings) as c,
        pytest.raises(client.BadOrder, match="order 2: card_token: Field required"),
    ):
        c.place_many([ORDER, no_card])
    assert client.get("ord-never-placed", settings=settings) is None
    with pytest.raises(client.NotSettled, match="1 order"):
        client.wait("ord-never-placed", timeout=0.5, settings=settings)


def test_a_wrong_price_says_which_line_and_price_where_a_user_looks(settings, stack, mixed):
    from choreo.infra.db import engine_for
    from models.envelope import decode
    from models.tables import Outbox

    order_id = next(o["order_id"] for o in mixed["orders"] if o["scenario"] == "price_mismatch")
    details = choreo_json("order", order_id)
    assert (details["state"], details["reason"]) == ("CANCELLED", "price_mismatch")
    said = re.fullmatch(
        r"client price differs from the catalog: (SKU-\w+) at (\d+) \(catalog (\d+)\)",
        details["reason_detail"],
    )
    assert said and int(said.group(2)) == int(said.group(3)) - 1
    with Session(engine_for(settings, "order")) as s:
        body = s.exec(
            select(Outbox.body).where(Outbox.order_id == order_id, Outbox.type == "order.cancelled")
        ).one()
    event = decode(json.loads(body))
    assert event.payload["reason"] == "price_mismatch"
    assert event.payload["detail"] == details["reason_detail"]
    assert any(details["reason_detail"] in (t["detail"] or "") for t in details["timeline"])
    shown = choreo("order", order_id, columns=80).stdout
    assert max(len(line) for line in shown.splitlines()) <= 80
    assert said.group(0)[:40] in " ".join(shown.split())
    times = re.findall(r"\b\d\d:\d\d:\d\d\.\d\d\d\b", shown)
    assert len(times) == len(details["timeline"])
    assert times == [t["at"][11:23] for t in details["timeline"]]  # whole, and in their order


def test_order_json_has_the_documented_fields(settings, stack, mixed):
    from tests.unit.test_docs import documented_order_fields

    order_id = next(o["order_id"] for o in mixed["orders"] if o["scenario"] == "completed")
    assert list(choreo_json("order", order_id)) == documented_order_fields()


@sqlite_pass_only  # what the commands print, whatever database they read
def test_every_json_command_prints_json_alone_on_stdout(settings, stack, mixed):
    """Each `--json` command a script can run against a plain stack (chaos and cluster status
    need stacks of their own); progress and warnings may go to stderr."""
    order_id = mixed["orders"][0]["order_id"]
    for args in (
        ("status",),
        ("breakers",),
        ("audit",),
        ("stuck",),
        ("order", order_id),
        ("trace", order_id),
        ("dlq", "list", "payment"),
        ("dlq", "replay", "payment"),
        ("dlq", "replays"),
        ("broker", "users"),
        ("enqueue", "-n", "1", "--no-wait"),
        ("enqueue", "-n", "1", "--mix", "declined"),
    ):
        out = choreo(*args, "--json", check=False)
        assert out.returncode in (0, 1), (args, out.stderr[-2000:])  # audit/trace may say 1
        try:
            json.loads(out.stdout)
        except json.JSONDecodeError as exc:
            pytest.fail(
                f"choreo {' '.join(args)} --json: stdout is not JSON ({exc}):\n{out.stdout}"
            )
    users = choreo_json("broker", "users")["users"]
    assert {"order", "payment", "operator"} <= {u["service"] for u in users}
    assert all("password" not in u for u in users)  # where it is, never what it is
