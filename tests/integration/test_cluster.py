"""A private three-node cluster (choreo.devtools.cluster) on real RabbitMQ nodes: it forms; choreo's
own set-up puts a replica of every quorum queue on each node; a leader's crash moves leadership to
another node without losing a confirmed message, and the node rejoins when started again; an app
stop on another node comes back; `down` leaves no process of its own, and the machine's own node
(rabbit@<host>, run by user rabbitmq) is never touched.

Fresh ports (a free block, never 5672/25672/4369) and a fresh folder, removed at the end."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pika
import pytest

from choreo.devtools.cluster import SPAN, Cluster, ClusterError, available
from choreo.devtools.sandbox import Sandbox
from choreo.ops.stack import free_port_block
from consumers.registry import topology
from tests.helpers import sqlite_pass_only, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not available(), reason="RabbitMQ (rabbitmq-server, epmd) is not installed"),
    # The cluster's own behaviour; choreo on a cluster with PostgreSQL is the chaos cluster run's.
    sqlite_pass_only,
]

QUEUE = "choreo.payment"
TIMINGS: dict[str, float] = {}


def machine_node() -> list[str]:
    """The pids of the machine's own RabbitMQ (user rabbitmq): the same before and after."""
    return subprocess.run(
        ["pgrep", "-u", "rabbitmq", "beam"], capture_output=True, text=True
    ).stdout.split()


def epmd_names(port: int) -> str:
    """`epmd -names` against the epmd on `port` (a query: it starts none)."""
    return subprocess.run(
        ["epmd", "-names"],
        env={**os.environ, "ERL_EPMD_PORT": str(port)},
        capture_output=True,
        text=True,
    ).stdout


class timed:
    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc) -> None:
        TIMINGS[self.what] = round(time.monotonic() - self.start, 1)


@pytest.fixture(scope="module")
def machine_node_before() -> list[str]:
    return machine_node()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, machine_node_before):
    c = Cluster(
        tmp_path_factory.mktemp("cluster"),
        tag=f"t{uuid.uuid4().hex[:6]}",
        base_port=free_port_block(SPAN) + 1,
    )
    try:
        with timed("up"):
            c.up()
        yield c
    finally:
        c.down(purge=True)
        print(f"\ncluster timings (s): {TIMINGS}")


def queue_now(c: Cluster, vhost: str, queue: str) -> dict:
    """queue_info, or {} while the cluster cannot say (an election under way)."""
    try:
        return c.queue_info(vhost, queue)
    except (ClusterError, subprocess.TimeoutExpired):
        return {}


def quorum_queues(c: Cluster, vhost: str) -> dict[str, dict]:
    rows = json.loads(
        c.ctl(
            "list_queues", "-p", vhost, "name", "type", "members", "online", "--formatter", "json"
        )
    )
    return {r["name"]: r for r in rows if r["type"] == "quorum"}


def test_up_forms_one_cluster_of_three_and_is_idempotent(cluster):
    status = cluster.status()
    names = sorted(cluster.name(i) for i in cluster.nodes)
    assert [n["running"] and n["app_running"] for n in status["nodes"]] == [True] * 3
    assert all(n["members"] == names for n in status["nodes"]), status["nodes"]
    assert len({n["amqp"] for n in status["nodes"]} | {n["mgmt"] for n in status["nodes"]}) == 6
    assert status["urls"].count(";") == 2 and ":5672" not in status["urls"]
    # Registered with its own epmd only: the machine's (4369) knows none of its nodes.
    assert all(f"name {n.split('@')[0]} " in epmd_names(cluster.base_port) for n in names)
    assert cluster.tag not in epmd_names(4369)
    pids = [n["pid"] for n in status["nodes"]]
    with timed("second up"):
        again = cluster.up()
    assert [n["pid"] for n in again["nodes"]] == pids  # nothing restarted
    # Every node re-sends an unconfirmed at-least-once dead letter (a retry copy caught in a leader
    # change) after 5 s, not RabbitMQ's 180.
    for i in cluster.nodes:
        assert (
            cluster.ctl(
                "eval",
                "application:get_env(rabbit, dead_letter_worker_publisher_confirm_timeout).",
                node=i,
            ).strip()
            == "{ok,5000}"
        )


def test_choreo_on_the_cluster_survives_a_leader_crash(cluster):
    sandbox = Sandbox("cluster", cluster_dir=cluster.base_dir)
    assert sandbox.settings.broker_cluster_dir == str(cluster.base_dir)
    try:
        with timed("sandbox open"):
            # vhost, users and grants (import_definitions through the folder's rabbitmqctl),
            # topology
            sandbox.open()
        vhost, names = sandbox.vhost, sorted(cluster.name(i) for i in cluster.nodes)
        users = cluster.ctl("list_users", "--no-table-headers")
        assert f"{sandbox.overrides['broker_user_prefix']}payment" in users
        expected = {
            q.name
            for q in topology(sandbox.settings).all_queues()
            if q.queue_arguments["x-queue-type"] == "quorum"
        }
        queues = quorum_queues(cluster, vhost)
        assert set(queues) == expected
        assert all(
            sorted(q["members"]) == names and sorted(q["online"]) == names for q in queues.values()
        ), queues

        # A confirmed message, then the leader's node crashes.
        body = f"kept-{uuid.uuid4().hex}".encode()
        leader = [cluster.name(i) for i in cluster.nodes].index(
            cluster.queue_info(vhost, QUEUE)["leader"]
        ) + 1
        other = next(i for i in cluster.nodes if i != leader)
        conn = pika.BlockingConnection(
            pika.URLParameters(cluster.urls(vhost=vhost).split(";")[other - 1])
        )
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            "", QUEUE, body, pika.BasicProperties(delivery_mode=2), mandatory=True
        )
        conn.close()
        killed = cluster.name(leader)

        def led_elsewhere() -> dict:
            q = queue_now(cluster, vhost, QUEUE)
            return (
                q if q.get("leader") not in (killed, "", None) and killed not in q["online"] else {}
            )

        with timed("failover"):
            cluster.kill(leader)
            info = wait_for(
                led_elsewhere, timeout=30, what=f"a leader of {QUEUE} other than {killed}"
            )
        assert info["leader"] in names and cluster.pid(leader) is None
        conn = pika.BlockingConnection(
            pika.URLParameters(cluster.urls(vhost=vhost).split(";")[other - 1])
        )
        _method, _props, got = conn.channel().basic_get(QUEUE, auto_ack=True)
        conn.close()
        assert got == body

        # Started again, it rejoins by itself: every replica online again.
        with timed("restart and rejoin"):
            cluster.start(leader)
            wait_for(
                lambda: all(
                    sorted(q["online"]) == names for q in quorum_queues(cluster, vhost).values()
                ),
                timeout=60,
                what="every quorum queue with 3 members online again",
            )
        assert sorted(cluster.cluster_status(leader)["running_nodes"]) == names

        # An app stop on another node: its replicas go offline, the VM stays; start_app brings
        # them back.
        third = next(i for i in cluster.nodes if i != leader and cluster.name(i) != info["leader"])
        with timed("stop_app/start_app"):
            cluster.stop_app(third)
            assert cluster.pid(third) is not None and not cluster.app_running(third)
            wait_for(
                lambda: (
                    cluster.name(third) not in queue_now(cluster, vhost, QUEUE).get("online", names)
                ),
                timeout=30,
                what=f"{cluster.name(third)} offline in {QUEUE}",
            )
            cluster.start_app(third)
            cluster.wait_running(third, 60)
            wait_for(
                lambda: sorted(queue_now(cluster, vhost, QUEUE).get("online", [])) == names,
                timeout=30,
                what=f"{QUEUE} with 3 members online",
            )
    finally:
        with timed("sandbox close"):
            problems = sandbox.close()
    assert problems == []
    assert vhost not in cluster.ctl("list_vhosts")


def test_down_stops_its_own_processes_only(cluster, machine_node_before):
    pids = [cluster.pid(i) for i in cluster.nodes] + [cluster.status()["epmd"]["pid"]]
    assert all(pids)
    with timed("down"):
        ended = cluster.down()
    assert set(pids) <= set(ended)
    assert [
        p
        for p in pids
        if subprocess.run(["kill", "-0", str(p)], capture_output=True).returncode == 0
    ] == []
    assert cluster.strays() == []  # no process left with the cluster's id (no epmd, no helper)
    assert cluster.status()["nodes"][0]["running"] is False
    assert machine_node() == machine_node_before
