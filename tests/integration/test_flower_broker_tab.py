"""Flower's Broker tab is filled when a management API answers: a private one-node RabbitMQ
(choreo.devtools.cluster, the management plugin on) and a sandbox on it, with Flower started as
`choreo up` starts it, reading the queues as its own broker user. The machine's shared node has
no management plugin and is never touched."""

from __future__ import annotations

import uuid

import httpx
import pytest

from choreo.devtools.cluster import SPAN, Cluster, available
from choreo.devtools.sandbox import Sandbox
from choreo.ops.stack import Stack, free_port_block
from tests.helpers import sqlite_pass_only, wait_for

pytestmark = [
    pytest.mark.integration,
    sqlite_pass_only,  # no service database in it
    pytest.mark.timeout(300),
    pytest.mark.skipif(not available(), reason="RabbitMQ (rabbitmq-server, epmd) is not installed"),
]


def test_the_broker_tab_lists_the_queues_through_the_management_api(tmp_path):
    node = Cluster(
        tmp_path / "node",
        tag=f"f{uuid.uuid4().hex[:6]}",
        size=1,
        base_port=free_port_block(SPAN) + 1,
    )
    sandbox = None
    try:
        node.up()
        api = f"http://127.0.0.1:{node.ports(1)['mgmt']}"
        sandbox = Sandbox("flowertab", cluster_dir=node.base_dir, broker_admin_api=api)
        sandbox.open()  # the vhost, the users (flower tagged `management`) and the topology
        settings = sandbox.settings
        stack = Stack(settings, sandbox.env)
        stack.start("flower")
        page = f"http://127.0.0.1:{settings.flower_port}/broker"
        unrouted = f"{settings.namespace}.unrouted"  # Flower's own app's queue, with no worker

        def broker_tab() -> str:
            try:
                text = httpx.get(page, timeout=5, trust_env=False).text
            except httpx.HTTPError:
                return ""
            return text if unrouted in text else ""

        text = wait_for(broker_tab, 90, interval=1, what="the Broker tab's queue list")
        assert "No queue data is available" not in text
        assert "Broker tab stays empty" not in stack.logfile("flower").read_text()
    finally:
        if sandbox is not None:
            Stack(sandbox.settings, sandbox.env).stop("flower")
            sandbox.close()
        node.down(purge=True)
