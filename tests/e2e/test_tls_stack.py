"""Everything over TLS: a stack whose broker is a private three-node RabbitMQ cluster serving amqps
only (`choreo cluster up --tls`: its own CA, plain AMQP off, the nodes and rabbitmqctl talking TLS
to each other) and whose Redis is a private redis-server serving TLS only runs every path end to
end; a client with the wrong CA is refused with one line; nothing answers in clear text."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pika
import pytest
import redis

from choreo.devtools import cluster as rabbit_cluster
from tests.helpers import settled

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not rabbit_cluster.available(), reason="rabbitmq-server and epmd are not installed"
    ),
    # Its databases are SQLite whatever the pass: once is enough (PostgreSQL over TLS has
    # tests/integration/test_postgres_tls.py).
    pytest.mark.skipif(
        bool(os.environ.get("CHOREO_TEST_DATABASE_SERVER")), reason="runs in the SQLite pass only"
    ),
]


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory):
    from choreo.devtools.cluster import SPAN, Cluster
    from choreo.devtools.sandbox import Sandbox
    from choreo.ops.stack import bring_up, free_port_block, process_names

    node = Cluster(
        tmp_path_factory.mktemp("tls-cluster"),
        tag=f"tls{uuid.uuid4().hex[:6]}",
        size=3,
        base_port=free_port_block(SPAN) + 1,
        tls=True,
    )
    sandbox = stack = None
    try:
        node.up()
        sandbox = Sandbox("tls", cluster_dir=node.base_dir, redis_tls=True).open()
        names = [n for n in process_names(sandbox.settings) if n != "flower"]
        stack = bring_up(sandbox.settings, names, 120, sandbox.env)
        yield node, sandbox, stack
    finally:
        if stack is not None:
            for name in reversed(process_names(sandbox.settings)):
                stack.stop(name)
        if sandbox is not None:
            for problem in sandbox.close():
                print(f"tls sandbox cleanup: {problem}")
        node.down(purge=True)


def test_every_path_runs_end_to_end_over_tls(tls_stack):
    from choreo.ops.audit import run_audit
    from choreo.ops.scenarios import SCENARIOS
    from choreo.ops.workload import expected_by_scenario, publish_orders

    node, sandbox, stack = tls_stack
    settings = sandbox.settings
    assert settings.broker_url.count("amqps://") == 3 and settings.redis_url.startswith("rediss://")
    names = sorted(node.name(i) for i in node.nodes)
    assert sorted(node.cluster_status(1)["running_nodes"]) == names  # formed over TLS distribution
    sent = publish_orders(settings, list(SCENARIOS) * 2, seed=None)
    states = settled(settings, [o for o, _ in sent], timeout=120)
    expected = expected_by_scenario()
    assert {o: states[o] for o, _ in sent} == {o: expected[s] for o, s in sent}
    assert [c.name for c in run_audit(settings) if not c.passed] == []
    for domain in settings.domains:  # each worker connected over TLS
        assert "amqps://" in stack.logfile(f"worker-{domain}").read_text(), domain


def test_a_client_with_the_wrong_ca_is_refused_with_one_line(tls_stack, tmp_path):
    from choreo.ops import tlsca

    node, sandbox, _stack = tls_stack
    wrong = tlsca.unrelated_ca(tmp_path / "wrong")
    env = {**os.environ, **sandbox.env, "CHOREO_BROKER_CA_FILE": str(wrong.ca)}
    out = subprocess.run(
        [sys.executable, "-m", "choreo", "dlq", "list", "payment"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    port = node.ports(1)["amqp"]
    assert lines[0].startswith(
        f"error: TLS: the broker at 127.0.0.1:{port} presented a certificate that cannot be "
        f"verified against {wrong.ca}"
    ), lines[0]
    # Redis with the wrong CA: the handshake fails, nothing is read or written.
    client = redis.Redis.from_url(
        sandbox.settings.redis_url,
        ssl_ca_certs=str(wrong.ca),
        ssl_cert_reqs="required",
        socket_connect_timeout=2,
    )
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client.ping()


def test_nothing_answers_in_clear_text(tls_stack):
    node, sandbox, _stack = tls_stack
    for i in node.nodes:
        plain = pika.ConnectionParameters(
            host="127.0.0.1",
            port=node.ports(i)["amqp"],
            connection_attempts=1,
            socket_timeout=3,
            credentials=pika.PlainCredentials("guest", "guest"),
        )
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(plain)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=sandbox.redis_port, socket_connect_timeout=2, socket_timeout=2).ping()
