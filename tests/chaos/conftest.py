"""One CI-sized chaos run shared by the chaos tests: its report is what they assert on; and one
private three-node RabbitMQ cluster shared by the modules that fault broker nodes.

The harness builds its own sandbox (vhost, Redis server, folders, ports), so it needs no
fixture from tests/conftest.py; it inherits that file's short retry ladder through the
environment. Set CHOREO_CHAOS_SEED to replay a run's fault schedule, and CHOREO_CHAOS_REPORT
to a path to keep the run's report as JSON (a CI artifact).

A cluster takes half a minute to start and seconds to stop on two cores: the session starts one
(`chaos_cluster`) and each module that needs it takes it with `lease`, which hands it over
healthy (every node running its app, in one cluster) and empty (no vhost but "/", no user but
guest: what an earlier module left is deleted), whatever that module did to it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

CI_RUN = {
    "orders": 250,
    "duration": 60.0,
    "kill_every": 4.0,
    "broker_restart": "vhost",
    "settle_timeout": 90.0,
    # one domain stopped longer than its deadline: sagas expire, late answers are undone
    "outage": 16.0,
    "deadline": 10.0,
}


@pytest.fixture(scope="session")
def ci_run() -> dict:
    return dict(CI_RUN)


@pytest.fixture(scope="module")
def chaos_report(ci_run):
    from rich.console import Console

    from choreo.devtools.chaos import ChaosConfig, run_chaos

    missing = [tool for tool in ("rabbitmqctl", "redis-server") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"chaos tests need {', '.join(missing)} on PATH (make setup installs them)")
    seed = int(os.environ["CHOREO_CHAOS_SEED"]) if os.environ.get("CHOREO_CHAOS_SEED") else None
    # Printed into the captured output: shown with any failure, with the seed to replay it.
    report = run_chaos(
        ChaosConfig(seed=seed, **ci_run), console=Console(width=140, force_terminal=False)
    )
    if os.environ.get("CHOREO_CHAOS_REPORT"):
        Path(os.environ["CHOREO_CHAOS_REPORT"]).write_text(
            json.dumps(report.as_dict(), indent=2, default=str)
        )
    return report


class SharedCluster:
    """The session's private cluster (choreo.devtools.cluster), handed to one module at a time."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        # A module's failed run: the folder (the nodes' logs) outlives the session.
        self.keep = False
        self.fresh = True  # just up (Cluster.up saw every node in one cluster), nothing in it

    def lease(self, who: str):
        """The cluster, healthy and empty, for `who`: nodes a module left down started again, every
        node running in one cluster (so each quorum queue `who` declares has a replica online on
        every node), the vhosts and broker users a module left deleted (a sandbox's close deletes
        its own: this is the net under a close that failed)."""
        from choreo.devtools.cluster import Cluster, ClusterError
        from choreo.devtools.sandbox import delete_broker_users

        t = time.monotonic()
        if self.fresh:
            self.fresh = False
            return self.cluster
        # As its folder says now: a module's own Cluster (the chaos harness opens one) restarted
        # nodes, and their new pids are in cluster.json only.
        self.cluster = c = Cluster.open(self.cluster.base_dir)
        if not all(c.app_running(i) for i in c.nodes):
            c.up()  # starts what does not run (a node whose app stopped gets start_app)
        running = c.cluster_status(1)["running_nodes"]
        if missing := [c.name(i) for i in c.nodes if c.name(i) not in running]:
            raise ClusterError(f"not running in the shared cluster: {', '.join(missing)}")
        vhosts = [v for v in c.ctl("list_vhosts", "--no-table-headers").split() if v != "/"]
        for vhost in vhosts:
            c.ctl("delete_vhost", vhost)
        listing = c.ctl("list_users", "--no-table-headers").splitlines()
        users = [u for u in (line.split("\t")[0] for line in listing) if u and u != "guest"]
        if problems := delete_broker_users(users, cluster_dir=str(c.base_dir)):
            raise ClusterError(f"the shared cluster keeps users of an earlier module: {problems}")
        print(
            f"shared cluster for {who}: ready in {time.monotonic() - t:.1f}s"
            + (f"; deleted leftover vhosts {vhosts}" if vhosts else "")
            + (f"; deleted leftover users {users}" if users else "")
        )
        return c


@pytest.fixture(scope="session")
def chaos_cluster(tmp_path_factory):
    """One private three-node cluster for the session's node-fault modules (test_chaos_cluster,
    test_worker_failover), each in a vhost of its own; taken down (and removed, unless a run on it
    failed) at the session's end."""
    from choreo.devtools.cluster import Cluster
    from choreo.devtools.sandbox import private_cluster

    shared = SharedCluster(private_cluster("chaos", tmp_path_factory.mktemp("chaos-cluster")))
    yield shared
    cluster = Cluster.open(shared.cluster.base_dir)  # its nodes' pids now (see lease)
    if not shared.keep:  # its data goes with the folder: no clean stop (seconds a node) needed
        for i in cluster.nodes:
            if cluster.pid(i):
                cluster.kill(i)
    cluster.down(purge=not shared.keep)
