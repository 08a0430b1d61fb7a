"""The private cluster's pure parts (choreo.devtools.cluster): its URLs, its port layout, the
environment its processes get, and its folder before any node starts; with TLS, its CA
(choreo.ops.tlsca) and the configs naming it. Nothing here starts a process."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from kombu import Connection

from choreo.devtools.cluster import SPAN, Cluster, ClusterError
from choreo.ops import tlsca


def test_urls_are_kombus_failover_list_with_user_password_and_vhost_encoded(tmp_path):
    c = Cluster(tmp_path, base_port=5700)
    urls = c.urls("u", "p@ss:w/rd", vhost="shop/eu")
    assert urls == ";".join(
        f"amqp://u:p%40ss%3Aw%2Frd@127.0.0.1:{p}/shop%2Feu" for p in (5701, 5702, 5703)
    )
    conn = Connection(urls)  # what Celery and kombu make of broker_url
    assert (
        conn.alt == urls.split(";")
        and conn.virtual_host == "shop/eu"
        and conn.password == "p@ss:w/rd"
    )
    assert Connection(c.urls()).virtual_host == "/"


def test_ports_never_overlap_and_stay_in_the_span(tmp_path):
    c = Cluster(tmp_path, size=9, base_port=20000)
    ports = [p for i in c.nodes for p in c.ports(i).values()] + [c.base_port]
    assert len(set(ports)) == len(ports) == 9 * 3 + 1
    ctl_env = c.ctl_env(1)
    ctl = range(
        int(ctl_env["RABBITMQ_CTL_DIST_PORT_MIN"]), int(ctl_env["RABBITMQ_CTL_DIST_PORT_MAX"]) + 1
    )
    assert not set(ports) & set(ctl)
    assert all(20000 <= p < 20000 + SPAN for p in [*ports, *ctl])
    assert {5672, 15672, 25672, 4369}.isdisjoint(Cluster(tmp_path / "default").ports(1).values())


def test_its_processes_get_its_cookie_and_epmd_never_the_callers(tmp_path, monkeypatch):
    monkeypatch.setenv("RABBITMQ_ERLANG_COOKIE", "the-machines")
    monkeypatch.setenv("RABBITMQ_NODENAME", "rabbit@localhost")
    monkeypatch.setenv("ERL_FLAGS", "-kernel inet_dist_use_interface {0,0,0,0}")
    c = Cluster(tmp_path, tag="t", base_port=30000)
    env = c._node_env(2)
    assert "RABBITMQ_ERLANG_COOKIE" not in env and "ERL_FLAGS" not in env
    assert env["HOME"] == str(c.base_dir) and env["ERL_EPMD_PORT"] == "30000"
    assert env["RABBITMQ_NODENAME"] == "t-n2@localhost" and env["RABBITMQ_DIST_PORT"] == "30022"
    assert env["RABBITMQ_CONF_ENV_FILE"].startswith(
        str(c.base_dir)
    )  # never /etc/rabbitmq/rabbitmq-env.conf
    assert "-start_epmd false" in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]


def test_the_folder_has_a_private_cookie_loopback_configs_and_remembers_its_shape(tmp_path):
    c = Cluster(tmp_path / "c", tag="t", base_port=30000)
    c._layout()
    cookie = c.base_dir / ".erlang.cookie"
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o400 and len(cookie.read_text()) == 32
    conf = (c.folder(3) / "rabbitmq.conf").read_text()
    assert "listeners.tcp.1 = 127.0.0.1:30003" in conf and "management.tcp.ip = 127.0.0.1" in conf
    assert (c.folder(1) / "enabled_plugins").read_text() == "[rabbitmq_management].\n"
    again = Cluster.open(c.base_dir)
    assert (again.tag, again.size, again.base_port, again.state["id"]) == (
        "t",
        3,
        30000,
        c.state["id"],
    )
    cookie_before = cookie.read_text()
    again._layout()
    assert cookie.read_text() == cookie_before  # made once
    with pytest.raises(ClusterError, match="3 nodes"):
        Cluster(c.base_dir, tag="t", size=5)
    with pytest.raises(ClusterError, match="no cluster"):
        Cluster.open(tmp_path / "nothing")


# ---- TLS (choreo cluster up --tls): the folder's CA, the configs, what clients are told ---------


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> dict:
    """A TLS handshake between two in-process sockets; the certificate the server saw from the
    client."""
    a, b = socket.socketpair()
    seen: dict = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                seen["client"] = s.getpeercert()
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:  # the client refused us: its side says why
            seen["error"] = exc
        finally:
            a.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=hostname) as c:
            assert c.recv(2) == b"ok"
    finally:
        b.close()
        t.join(5)
    return seen


def test_the_ca_issues_a_node_certificate_for_localhost_both_ways_and_a_client_one(tmp_path):
    files = tlsca.ensure(tmp_path / "tls")
    for host in ("localhost", "127.0.0.1"):
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(files.node_cert, files.node_key)
        server.load_verify_locations(files.ca)
        server.verify_mode = ssl.CERT_REQUIRED
        for cert, key in ((files.client_cert, files.client_key), (files.node_cert, files.node_key)):
            client = ssl.create_default_context(
                cafile=str(files.ca)
            )  # check_hostname, CERT_REQUIRED
            client.load_cert_chain(
                cert, key
            )  # the node's own serves as a client one too (Erlang distribution)
            assert _handshake(server, client, host)["client"]
    other = tlsca.unrelated_ca(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, ssl.create_default_context(cafile=str(other.ca)), "localhost")
    node = x509.load_pem_x509_certificate(files.node_cert.read_bytes())
    assert node.not_valid_after_utc - node.not_valid_before_utc <= dt.timedelta(days=366)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_ca_folder_is_owner_only_made_once_and_mended(tmp_path):
    files = tlsca.ensure(tmp_path / "tls")
    assert stat.S_IMODE(files.folder.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files.folder.iterdir()}
    assert modes == {
        "ca.pem": 0o600,
        "ca.key": 0o400,
        "node.pem": 0o600,
        "node.key": 0o600,
        "client.pem": 0o600,
        "client.key": 0o600,
    }
    before = {p.name: p.read_bytes() for p in files.folder.iterdir()}
    tlsca.ensure(files.folder)
    assert {p.name: p.read_bytes() for p in files.folder.iterdir()} == before  # reused, not re-made
    # a leaf lost (or its pair broken): re-issued by the same CA, nothing else
    files.client_key.unlink()
    tlsca.ensure(files.folder)
    after = {p.name: p.read_bytes() for p in files.folder.iterdir()}
    assert {n for n in before if after[n] != before[n]} == {"client.pem", "client.key"}
    other = tlsca.unrelated_ca(tmp_path / "other")
    shutil.copy(other.node_cert, files.node_cert)  # a certificate another CA signed: replaced
    shutil.copy(other.node_key, files.node_key)
    tlsca.ensure(files.folder)
    node = x509.load_pem_x509_certificate(files.node_cert.read_bytes())
    node.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca.read_bytes()))
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in files.folder.iterdir())


def test_a_tls_cluster_has_no_plain_listener_tls_distribution_and_tells_its_clients(tmp_path):
    c = Cluster(tmp_path / "c", tag="t", size=2, base_port=30000, tls=True)
    c._layout()
    files = c.tls_files
    conf = (c.folder(2) / "rabbitmq.conf").read_text()
    assert "listeners.tcp = none" in conf and "listeners.ssl.1 = 127.0.0.1:30002" in conf
    assert "listeners.tcp.1" not in conf and "management.tcp" not in conf
    for line in (
        f"ssl_options.cacertfile = {files.ca}",
        f"ssl_options.certfile = {files.node_cert}",
        f"ssl_options.keyfile = {files.node_key}",
        "ssl_options.verify = verify_peer",
        "ssl_options.fail_if_no_peer_cert = false",
        "management.ssl.ip = 127.0.0.1",
        "management.ssl.port = 30012",
        f"management.ssl.certfile = {files.node_cert}",
    ):
        assert line in conf.splitlines()
    optfile = files.folder / "inter_node_tls.config"
    text = optfile.read_text()
    assert stat.S_IMODE(optfile.stat().st_mode) == 0o600
    assert (
        text.count("{verify, verify_peer}") == 2 and text.count("{fail_if_no_peer_cert, true}") == 1
    )
    assert (
        text.count(f'{{keyfile, "{files.node_key}"}}') == 2
        and "{server, [" in text
        and "{client, [" in text
    )
    tls_args = f"-proto_dist inet_tls -ssl_dist_optfile {optfile}"
    assert tls_args in c._node_env(1)["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert (
        tls_args in c.ctl_env(1)["RABBITMQ_CTL_ERL_ARGS"]
    )  # rabbitmqctl must speak TLS to the nodes too
    assert c.urls("u", "p", "v") == "amqps://u:p@127.0.0.1:30001/v;amqps://u:p@127.0.0.1:30002/v"
    assert Connection(c.urls()).transport.client.ssl  # kombu: amqps is TLS
    assert c.client_env() == {
        "CHOREO_BROKER_URL": c.urls(),
        "CHOREO_BROKER_CLUSTER_DIR": str(c.base_dir),
        "CHOREO_BROKER_CA_FILE": str(files.ca),
        "CHOREO_BROKER_CERT_FILE": str(files.client_cert),
        "CHOREO_BROKER_KEY_FILE": str(files.client_key),
    }
    assert (
        c.tls_status()["amqps_ports"] == [30001, 30002] and c.tls_status()["management"] == "https"
    )
    again = Cluster.open(c.base_dir)  # remembered (so `down` and `ctl` speak TLS to it)
    assert again.tls and tls_args in again.ctl_env(2)["RABBITMQ_CTL_ERL_ARGS"]


def test_a_plain_cluster_stays_plain_and_tls_only_changes_while_stopped(tmp_path, monkeypatch):
    c = Cluster(tmp_path / "c", tag="t", size=1, base_port=30000)
    c._layout()
    assert not c.tls and c.urls().startswith("amqp://") and c.tls_status() == {"enabled": False}
    assert set(c.client_env()) == {"CHOREO_BROKER_URL", "CHOREO_BROKER_CLUSTER_DIR"}
    assert (
        "proto_dist" not in c.ctl_env(1)["RABBITMQ_CTL_ERL_ARGS"]
        and not (c.base_dir / "tls").exists()
    )
    assert Cluster(c.base_dir, tag="t", size=1, tls=True).tls  # stopped: may change
    monkeypatch.setattr(Cluster, "pid", lambda self, i: 4242)  # as if its node ran
    with pytest.raises(ClusterError, match="runs without TLS.*stop it first"):
        Cluster(c.base_dir, tag="t", size=1, tls=True)
    assert not Cluster.open(c.base_dir).tls  # None (the default): as it is
    with pytest.raises(ClusterError, match="without spaces"):
        Cluster(tmp_path / "a b", tag="t", size=1, tls=True)
