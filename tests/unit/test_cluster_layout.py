"""The private cluster's pure parts (choreo.ops.cluster): its URLs, its port layout, the environment
its processes get, and its folder before any node starts. Nothing here starts a process."""
from __future__ import annotations

import stat

import pytest
from kombu import Connection

from choreo.ops.cluster import SPAN, Cluster, ClusterError


def test_urls_are_kombus_failover_list_with_user_password_and_vhost_encoded(tmp_path):
    c = Cluster(tmp_path, base_port=5700)
    urls = c.urls("u", "p@ss:w/rd", vhost="shop/eu")
    assert urls == ";".join(f"amqp://u:p%40ss%3Aw%2Frd@127.0.0.1:{p}/shop%2Feu" for p in (5701, 5702, 5703))
    conn = Connection(urls)  # what Celery and kombu make of broker_url
    assert conn.alt == urls.split(";") and conn.virtual_host == "shop/eu" and conn.password == "p@ss:w/rd"
    assert Connection(c.urls()).virtual_host == "/"


def test_ports_never_overlap_and_stay_in_the_span(tmp_path):
    c = Cluster(tmp_path, size=9, base_port=20000)
    ports = [p for i in c.nodes for p in c.ports(i).values()] + [c.base_port]
    assert len(set(ports)) == len(ports) == 9 * 3 + 1
    ctl_env = c.ctl_env(1)
    ctl = range(int(ctl_env["RABBITMQ_CTL_DIST_PORT_MIN"]), int(ctl_env["RABBITMQ_CTL_DIST_PORT_MAX"]) + 1)
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
    assert env["RABBITMQ_CONF_ENV_FILE"].startswith(str(c.base_dir))  # never /etc/rabbitmq/rabbitmq-env.conf
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
    assert (again.tag, again.size, again.base_port, again.state["id"]) == ("t", 3, 30000, c.state["id"])
    cookie_before = cookie.read_text()
    again._layout()
    assert cookie.read_text() == cookie_before  # made once
    with pytest.raises(ClusterError, match="3 nodes"):
        Cluster(c.base_dir, tag="t", size=5)
    with pytest.raises(ClusterError, match="no cluster"):
        Cluster.open(tmp_path / "nothing")
