"""Broker nodes die under load: one CI-sized `choreo chaos --cluster` run. On the session's private
three-node RabbitMQ cluster (choreo.devtools.cluster: own node names, ports, folders, cookie and
epmd; shared with test_worker_failover, see conftest.py), in a vhost and with broker users of its
own, two workers per domain on PostgreSQL; while 300 orders of every path flow, the node that
leads the busiest domain queue is killed -9 and started again, another node's app is stopped and
started, and workers are killed as in the single-node run. Then the audit. The run hands the
cluster back with every node running (the harness with ChaosConfig.cluster_dir)."""

from __future__ import annotations

import os

import pytest

from choreo.devtools import cluster as rabbit_cluster
from config.settings import DOMAINS

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(420),
    pytest.mark.skipif(
        not rabbit_cluster.available(), reason="rabbitmq-server and epmd are not installed"
    ),
]

CLUSTER_RUN = {
    "orders": 300,
    "duration": 70.0,
    "kill_every": 6.0,
    "settle_timeout": 150.0,
    "cluster": True,
    "workers_per_domain": 2,
    "node_down_seconds": 5.0,
    "database_server": os.environ.get(
        "CHOREO_TEST_DATABASE_SERVER", "postgresql://postgres:postgres@127.0.0.1:5432"
    ),
}


@pytest.fixture(scope="module")
def cluster_report(chaos_cluster):
    from rich.console import Console

    from choreo.devtools.chaos import ChaosConfig, run_chaos

    cluster = chaos_cluster.lease("chaos --cluster")
    seed = int(os.environ["CHOREO_CHAOS_SEED"]) if os.environ.get("CHOREO_CHAOS_SEED") else None
    report = run_chaos(
        ChaosConfig(seed=seed, cluster_dir=cluster.base_dir, **CLUSTER_RUN),
        console=Console(width=140, force_terminal=False),
    )
    chaos_cluster.keep |= not report.passed
    return report


def _why(report) -> str:
    failed = {
        c["name"]: dict(list(c["problems"].items())[:5]) for c in report.audit if not c["passed"]
    }
    return (
        f"seed {report.seed}, kept in {report.workdir}: errors {report.errors}; "
        f"failed checks {failed}; "
        f"wrong outcomes {report.mismatches}; unsettled {len(report.unsettled)}; "
        f"node faults {report.figures.get('node_faults')}; "
        f"progress {report.figures.get('progress_samples')}"
    )


def test_all_300_orders_end_where_their_data_asked_and_the_audit_is_green(cluster_report):
    assert cluster_report.passed and cluster_report.violations == 0, _why(cluster_report)
    f = cluster_report.figures
    assert f["orders_placed"] == 300 and sum(f["terminal"].values()) == 300, _why(cluster_report)
    assert cluster_report.mismatches == 0 and not cluster_report.missing, _why(cluster_report)


def test_the_leader_node_died_and_its_queue_got_a_new_leader(cluster_report):
    f = cluster_report.figures
    assert f["node_kills"] == 1 and f["node_stop_apps"] == 1, _why(cluster_report)
    kill = next(x for x in f["node_faults"] if x["fault"] == "kill -9")
    # It led that queue; a few seconds later another node does (seen by the harness within 60 s).
    assert 0 < kill["new_leader_after_s"] < 60, _why(cluster_report)
    moved = kill["leaders_moved"][kill["queue"]]
    assert moved.startswith(f"{kill['node']}->") and moved.split("->")[1] not in (
        "None",
        str(kill["node"]),
    ), moved
    # Sagas finished again after it (read from the run's progress samples, in _why).
    assert kill["pause_seconds"] is not None, _why(cluster_report)


def test_a_worker_on_a_faulted_node_reconnected_to_another_and_kept_consuming(cluster_report):
    # The workers on the killed node, and on the node whose app stopped (each process picks its
    # node at random: that neither had one is a (2/3)^20 chance).
    moved = {
        f"{x['fault']}: {name}": w
        for x in cluster_report.figures["node_faults"]
        for name, w in x["workers_failed_over"].items()
    }
    assert moved, _why(cluster_report)
    for (
        name,
        w,
    ) in moved.items():  # seen on another node while the killed one was down, then working
        assert w["reconnected_to"] and w["reconnected_to"] != w["was_on"], (name, w)
        assert w["reconnected_after_s"] < 60, (name, w)
    assert any(w["processed_after"] > 0 for w in moved.values()), moved


def test_both_workers_of_every_domain_got_work(cluster_report):
    handled = cluster_report.figures["handled_by_worker"]
    assert set(handled) == {f"worker-{d}" for d in DOMAINS} | {f"worker-{d}-2" for d in DOMAINS}
    assert all(n > 0 for n in handled.values()), (
        handled
    )  # competing consumers: each one took its share
