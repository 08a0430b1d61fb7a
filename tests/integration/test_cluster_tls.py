"""Private RabbitMQ nodes with TLS (choreo.devtools.cluster, `choreo cluster up --tls`) on real
nodes: the AMQP port speaks only TLS, verified against the CA the folder made (no plain AMQP
listener, so a password never crosses loopback in clear text); a client trusting another CA refuses
the node, and the node refuses a client certificate another CA signed; Erlang distribution speaks
TLS too (a rabbitmqctl without TLS is shut out; three nodes forming over it and running every path
is tests/e2e/test_tls_stack.py's); pika and kombu publish with confirms to a quorum queue over
amqps; the CA's files are owner-only and reused; `choreo cluster status --json` tells a client what
it needs.

Fresh ports (a free block) and fresh folders, taken down and removed at the end; the machine's
own node is never touched."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import time
import uuid

import httpx
import pika
import pytest
from click.testing import CliRunner
from kombu import Connection, Exchange, Producer

from choreo.cli.cluster import cluster as cluster_cli
from choreo.devtools.cluster import SPAN, Cluster, ClusterError, available, rabbitmq_bin
from choreo.ops import tlsca
from choreo.ops.stack import free_port_block

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not available(), reason="RabbitMQ (rabbitmq-server, epmd) is not installed"),
    pytest.mark.skipif(
        bool(os.environ.get("CHOREO_TEST_DATABASE_SERVER")),
        reason="no database in it: runs in the SQLite pass only",
    ),
]

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
TLS_ALERT = 0x15  # a TLS record of type alert
TIMINGS: dict[str, float] = {}


def machine_node() -> list[str]:
    return subprocess.run(
        ["pgrep", "-u", "rabbitmq", "beam"], capture_output=True, text=True
    ).stdout.split()


def start(tmp_path_factory, size: int) -> Cluster:
    c = Cluster(
        tmp_path_factory.mktemp(f"tls{size}"),
        tag=f"t{uuid.uuid4().hex[:6]}",
        size=size,
        base_port=free_port_block(SPAN) + 1,
        tls=True,
    )
    t0 = time.monotonic()
    try:
        c.up(timeout=120)
    except BaseException:
        c.down(purge=True)
        raise
    TIMINGS[f"up {size} node(s)"] = round(time.monotonic() - t0, 1)
    return c


def stop(c: Cluster) -> None:
    t0 = time.monotonic()
    c.down(purge=True)
    TIMINGS[f"down {c.size} node(s)"] = round(time.monotonic() - t0, 1)
    assert not c.strays() and not c.base_dir.exists()


@pytest.fixture(scope="module")
def machine_node_before() -> list[str]:
    return machine_node()


@pytest.fixture(scope="module")
def one(tmp_path_factory, machine_node_before):
    c = start(tmp_path_factory, 1)
    try:
        yield c
    finally:
        stop(c)
        print(f"\nTLS cluster timings (s): {TIMINGS}")
        assert machine_node() == machine_node_before  # the machine's own node: untouched


def client_context(ca, cert=None, key=None) -> ssl.SSLContext:
    """A client that verifies the peer by `ca` and its name (check_hostname), optionally showing
    a certificate."""
    ctx = ssl.create_default_context(cafile=str(ca))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def handshake(
    port: int,
    ctx: ssl.SSLContext,
    host: str = "127.0.0.1",
    then_send: bytes | None = None,
    then_read: bool = False,
) -> tuple[str, bytes]:
    """A TLS handshake with 127.0.0.1:port naming `host`; the protocol, and what the peer answers
    (to `then_send`, if any; b"" if it closes). With TLS 1.3 a server's refusal of the client's
    certificate comes after the client's handshake is done: it surfaces on that read."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as s,
    ):
        version = s.version()
        if then_send:
            s.sendall(then_send)
        return version, s.recv(64) if then_send or then_read else b""


def listeners(c: Cluster, i: int = 1) -> dict[str, int]:
    """protocol -> port of every listener node i has open now
    (rabbit_networking:active_listeners/0)."""
    out = c.ctl(
        "eval",
        "[{element(3, L), element(6, L)} || L <- rabbit_networking:active_listeners(),"
        " element(2, L) =:= node()].",
        node=i,
    )
    return {proto: int(port) for proto, port in re.findall(r"\{'?([\w/]+)'?,(\d+)\}", out)}


def bound(port: int) -> set[str]:
    """The local addresses listening on `port` now (/proc/net/tcp and tcp6, state LISTEN)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                local, st = row.split()[1], row.split()[3]
                addr, hexport = local.split(":")
                if st == "0A" and int(hexport, 16) == port:
                    found.add(
                        str(ipaddress.ip_address(bytes.fromhex(addr)[::-1]))
                        if len(addr) == 8
                        else addr
                    )
    return found


# ---- one node -----------------------------------------------------------------------------


def test_amqp_port_speaks_only_tls_verified_by_the_clusters_ca(one):
    ports, files = one.ports(1), one.tls_files
    for host in ("127.0.0.1", "localhost"):  # the certificate names both (SANs IP and DNS)
        version, _ = handshake(ports["amqp"], client_context(files.ca), host)
        assert version in ("TLSv1.2", "TLSv1.3")
    # The AMQP handshake over TLS: the broker answers with its Connection.Start frame.
    _, answer = handshake(ports["amqp"], client_context(files.ca), then_send=AMQP_HEADER)
    assert answer[:1] == b"\x01"  # a method frame
    # In clear, the same header gets a TLS alert (or a close), never an AMQP answer.
    with socket.create_connection(("127.0.0.1", ports["amqp"]), timeout=10) as s:
        s.sendall(AMQP_HEADER)
        answer = s.recv(64)
    assert answer == b"" or answer[0] == TLS_ALERT, answer
    assert not answer.startswith(b"AMQP") and answer[:1] != b"\x01"
    # And the node has no plain AMQP listener at all: amqps, distribution, HTTPS management only.
    assert listeners(one) == {
        "amqp/ssl": ports["amqp"],
        "clustering": ports["dist"],
        "https": ports["mgmt"],
    }
    # All on loopback (the https listener's record says {0,0,0,0,0,0,0,0}, but it binds
    # management.ssl.ip).
    assert all(bound(p) == {"127.0.0.1"} for p in ports.values()), {
        p: bound(p) for p in ports.values()
    }
    assert one.urls() == f"amqps://guest:guest@127.0.0.1:{ports['amqp']}/%2F"
    assert one.admin_api() == f"https://127.0.0.1:{ports['mgmt']}"


def test_another_ca_is_refused_both_ways(one, tmp_path):
    other = tlsca.unrelated_ca(tmp_path / "other")
    port = one.ports(1)["amqp"]
    # A client that trusts only another CA refuses the node's certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(port, client_context(other.ca))
    # The node (verify_peer) refuses a client certificate another CA signed...
    with pytest.raises(
        ssl.SSLError
    ):  # its alert "unknown CA" (or, racing it, the close that follows)
        handshake(
            port,
            client_context(one.tls_files.ca, other.client_cert, other.client_key),
            then_read=True,
        )
    # ...and takes its own CA's (optional: passwords still authenticate).
    _, answer = handshake(
        port,
        client_context(one.tls_files.ca, one.tls_files.client_cert, one.tls_files.client_key),
        then_send=AMQP_HEADER,
    )
    assert answer[:1] == b"\x01"


def test_distribution_speaks_tls_and_requires_a_certificate_of_the_ca(one, tmp_path):
    files, dist = one.tls_files, one.ports(1)["dist"]
    version, _ = handshake(
        dist, client_context(files.ca, files.client_cert, files.client_key), "localhost"
    )
    assert version in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLError):  # fail_if_no_peer_cert: no certificate, no distribution
        handshake(dist, client_context(files.ca), then_read=True)
    other = tlsca.unrelated_ca(tmp_path / "other")
    with pytest.raises(ssl.SSLError):
        handshake(
            dist, client_context(files.ca, other.client_cert, other.client_key), then_read=True
        )
    assert one.ctl("eval", "init:get_argument(proto_dist).").strip() == '{ok,[["inet_tls"]]}'
    # rabbitmqctl with the cluster's TLS flags reaches the node (every ctl call here does);
    # without them, not.
    env = one.ctl_env(1)
    assert "-proto_dist inet_tls" in env["RABBITMQ_CTL_ERL_ARGS"]
    plain = subprocess.run(
        [str(rabbitmq_bin() / "rabbitmqctl"), "-q", "-n", one.name(1), "-t", "20", "ping"],
        env=dict(env, RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode != 0, plain.stdout


def test_pika_and_kombu_confirm_a_message_to_a_quorum_queue_over_amqps(one):
    vhost, queue, files = f"tls-{uuid.uuid4().hex[:6]}", "choreo.tls-check", one.tls_files
    one.ctl("add_vhost", vhost)
    one.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        params = pika.URLParameters(one.urls(vhost=vhost))
        assert params.port == one.ports(1)["amqp"] and params.virtual_host == vhost
        params.ssl_options = pika.SSLOptions(
            client_context(files.ca, files.client_cert, files.client_key),
            server_hostname="127.0.0.1",
        )
        conn = pika.BlockingConnection(params)
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
            ch.basic_publish(
                "", queue, b"over tls", pika.BasicProperties(delivery_mode=2), mandatory=True
            )
            # kombu (py-amqp), as choreo's workers will: the URL's amqps and these ssl options.
            with Connection(
                one.urls(vhost=vhost),
                connect_timeout=10,
                transport_options={"confirm_publish": True},
                ssl={
                    "ca_certs": str(files.ca),
                    "certfile": str(files.client_cert),
                    "keyfile": str(files.client_key),
                    "cert_reqs": ssl.CERT_REQUIRED,
                    "server_hostname": None,
                },
            ) as k:
                Producer(k.default_channel, exchange=Exchange("")).publish(
                    b"kombu over tls", routing_key=queue, delivery_mode=2, retry=False
                )
                assert isinstance(k.connection.sock, ssl.SSLSocket)
            rows = json.loads(
                one.ctl(
                    "list_connections",
                    "-p",
                    vhost,
                    "ssl",
                    "ssl_protocol",
                    "peer_cert_subject",
                    "user",
                    "--formatter",
                    "json",
                )
            )
            assert rows and all(r["ssl"] for r in rows), rows  # (kombu's may still be closing)
            assert any(
                r["user"] == "guest"
                and r["ssl_protocol"] in ("tlsv1.2", "tlsv1.3")
                and "client,O=choreo" in r["peer_cert_subject"]
                for r in rows
            ), rows
            got = []
            for _ in range(2):
                method, _props, body = ch.basic_get(queue)
                ch.basic_ack(method.delivery_tag)
                got.append(body)
            assert got == [b"over tls", b"kombu over tls"]
            assert one.queue_info(vhost, queue)["type"] == "quorum"
        finally:
            conn.close()
    finally:
        one.ctl("delete_vhost", vhost, check=False)


def test_tls_files_are_owner_only_and_made_once(one):
    files = one.tls_files
    assert stat.S_IMODE(files.folder.stat().st_mode) == 0o700
    for key in (files.ca_key, files.node_key, files.client_key):
        assert stat.S_IMODE(key.stat().st_mode) & 0o077 == 0, key
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o400
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in files.folder.iterdir())
    before = {p.name: p.read_bytes() for p in files.folder.iterdir()}
    pid = one.pid(1)
    assert one.up()["nodes"][0]["pid"] == pid  # idempotent: nothing restarted...
    assert {p.name: p.read_bytes() for p in files.folder.iterdir()} == before  # ...nor re-issued


def test_status_json_and_client_env_tell_a_client_what_it_needs(one):
    result = CliRunner().invoke(cluster_cli, ["status", "--json", "--dir", str(one.base_dir)])
    assert result.exit_code == 0, result.output
    tls = json.loads(result.output)["tls"]
    files = one.tls_files
    assert tls == {
        "enabled": True,
        "ca_file": str(files.ca),
        "cert_file": str(files.client_cert),
        "key_file": str(files.client_key),
        "amqps_ports": [one.ports(1)["amqp"]],
        "management": "https",
        "inter_node": "inet_tls",
        "plain_amqp": False,
    }
    text = CliRunner().invoke(cluster_cli, ["status", "--dir", str(one.base_dir)])
    assert text.exit_code == 0 and "TLS: on" in text.output and str(files.ca) in text.output
    assert one.client_env() == {
        "CHOREO_BROKER_URL": one.urls(),
        "CHOREO_BROKER_CLUSTER_DIR": str(one.base_dir),
        "CHOREO_BROKER_CA_FILE": str(files.ca),
        "CHOREO_BROKER_CERT_FILE": str(files.client_cert),
        "CHOREO_BROKER_KEY_FILE": str(files.client_key),
    }
    # The management API over HTTPS, verified by the CA.
    r = httpx.get(
        f"{one.admin_api()}/api/overview",
        auth=("guest", "guest"),
        verify=client_context(files.ca),
        timeout=10,
        trust_env=False,
    )
    assert r.status_code == 200 and r.json()["cluster_name"] == one.tag
    # TLS cannot be switched while it runs.
    with pytest.raises(ClusterError, match="stop it first"):
        Cluster(one.base_dir, tag=one.tag, size=1, tls=False)
    refused = CliRunner().invoke(cluster_cli, ["up", "--no-tls", "--dir", str(one.base_dir)])
    assert refused.exit_code != 0 and "stop it first" in refused.output
    assert Cluster.open(one.base_dir).tls
