"""TLS from settings (choreo.infra.tls, config.settings): what each client is given, and what is
refused before any connection is made. The handshakes themselves are in
tests/integration/test_tls_stack.py against a private TLS RabbitMQ node."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from choreo.infra import tls
from choreo.messaging.admin import connection_parameters
from config.settings import Settings, verified_database_url


@pytest.fixture
def ca(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text("not read by these tests")
    return str(path)


def test_plain_urls_ask_for_no_tls():
    s = Settings()
    assert not tls.broker_uses_tls(s) and tls.kombu_ssl(s) is False and tls.redis_options(s) == {}


def test_amqps_gets_a_verifying_kombu_config_each_time_a_fresh_one(ca):
    s = Settings(
        broker_url="amqps://u:p@10.0.0.1:5671/v;amqps://u:p@10.0.0.2:5671/v", broker_ca_file=ca
    )
    first, second = tls.kombu_ssl(s), tls.kombu_ssl(s)
    assert first == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": None,
        "ca_certs": ca,
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
    }
    first["server_hostname"] = "10.0.0.1"  # what kombu does to the dict it is given
    assert second["server_hostname"] is None


def test_a_cluster_with_one_node_in_clear_text_is_refused():
    s = Settings(broker_url="amqps://u:p@a:5671/v;amqp://u:p@b:5672/v")
    with pytest.raises(tls.TLSRefused, match="every node must use TLS"):
        tls.broker_uses_tls(s)


def test_pika_checks_each_nodes_own_host_name(ca):
    ctx = ssl.create_default_context()
    params = connection_parameters("amqps://u:p@a.example:5671/v;amqps://u:p@b.example/v", ctx)
    by_host = {p.host: p for p in params}
    assert {h: (p.port, p.ssl_options.server_hostname) for h, p in by_host.items()} == {
        "a.example": (5671, "a.example"),
        "b.example": (5671, "b.example"),
    }
    assert all(p.ssl_options.context is ctx for p in params)
    with pytest.raises(tls.TLSRefused, match="needs a TLS context"):
        connection_parameters("amqps://u:p@a.example/v")
    [plain] = connection_parameters("amqp://u:p@a.example/v")
    assert plain.ssl_options is None and plain.port == 5672


def test_rediss_verifies_the_server_and_its_host_name(ca):
    opts = tls.redis_options(Settings(redis_url="rediss://r.example:6380/0", redis_ca_file=ca))
    assert (
        opts["ssl_cert_reqs"] == "required"
        and opts["ssl_check_hostname"]
        and opts["ssl_ca_certs"] == ca
    )


def test_a_database_ca_makes_every_postgresql_url_verify_full(ca):
    s = Settings(
        database_server="postgresql://u:p@db.example:5432?connect_timeout=5", database_ca_file=ca
    )
    url = s.database_url("payment")
    assert url.startswith("postgresql://u:p@db.example:5432/choreo_payment?")
    assert "sslmode=verify-full" in url and "connect_timeout=5" in url and "sslrootcert=" in url
    # An sslmode the operator named is kept; SQLite is left alone.
    assert "sslmode=require" in verified_database_url("postgresql://h/db?sslmode=require", ca)
    assert Settings(database_ca_file=ca).database_url("order").startswith("sqlite:///")


def test_a_tls_file_that_does_not_exist_is_refused_with_its_name(tmp_path):
    with pytest.raises(ValidationError, match="no such file"):
        Settings(broker_ca_file=str(tmp_path / "missing.pem"))
