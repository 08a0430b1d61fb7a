"""Several workers per domain: names, command lines, ports, node names, grants, the SQLite guard
and the stack's recorded shape (pure parts; the running competing workers are in
tests/e2e/test_competing_workers.py and the cluster chaos run)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from choreo.messaging import access
from choreo.ops import prometheus
from choreo.ops.stack import argv_for, process_names, worker_name, worker_of
from config.settings import DOMAINS, HEALTH_PORT_OFFSETS, Settings

PG = "postgresql://postgres@127.0.0.1:5432"


def _settings(tmp_path, **kw) -> Settings:
    return Settings(run_dir=tmp_path / "run", data_dir=tmp_path / "data", **kw)


def test_names_and_command_lines_of_further_workers(tmp_path):
    s = _settings(tmp_path, workers_per_domain=3, database_server=PG)
    names = process_names(s)
    assert (
        names[:4] == ["users", "worker-order", "worker-order-2", "worker-order-3"]
        and names[-1] == "flower"
    )
    assert len([n for n in names if worker_of(n)]) == 3 * len(DOMAINS)
    assert [worker_of(n) for n in ("worker-payment", "worker-payment-3", "users")] == [
        ("payment", 1),
        ("payment", 3),
        None,
    ]
    assert (
        worker_name("payment", 1) == "worker-payment"
        and worker_name("payment", 2) == "worker-payment-2"
    )
    assert argv_for("worker-payment")[-2:] == ["worker", "payment"]
    assert argv_for("worker-payment-2")[-4:] == ["worker", "payment", "--index", "2"]


def test_each_worker_has_its_own_health_port_and_prometheus_target(tmp_path):
    s = _settings(tmp_path, workers_per_domain=2, database_server=PG, health_port_base=9100)
    assert s.health_port("payment", 2) == s.health_port("payment") + len(HEALTH_PORT_OFFSETS)
    ports = [s.health_port(d, i) for d in s.domains for i in (1, 2)]
    assert len(set(ports)) == len(ports)
    targets = prometheus.scrape_targets(s)
    assert targets["worker-payment-2"] == f"127.0.0.1:{s.health_port('payment', 2)}"
    assert targets["worker-payment"] == f"127.0.0.1:{s.health_port('payment')}"


def test_a_further_workers_node_name_is_its_own_and_within_its_grant(tmp_path):
    s = _settings(tmp_path)
    assert (
        access.node_name(s, "payment") == "payment"
        and access.node_name(s, "payment", 2) == "payment-2"
    )
    configure = access.grants(s, {"payment": {"order.placed"}})["payment"].configure
    assert re.fullmatch(configure, "payment-2@host.celery.pidbox")
    assert not re.fullmatch(configure, "inventory-2@host.celery.pidbox")


def test_more_than_one_worker_needs_a_database_server(tmp_path):
    with pytest.raises(ValidationError, match="needs a database server"):
        _settings(tmp_path, workers_per_domain=2)
    assert _settings(tmp_path, workers_per_domain=2, database_server=PG).workers_per_domain == 2
    with pytest.raises(ValidationError):
        _settings(tmp_path, workers_per_domain=9, database_server=PG)


def test_later_commands_see_the_worker_count_the_stack_was_started_with(tmp_path, monkeypatch):
    from choreo.cli.base import WORKERS_MARKER, current_settings
    from config.settings import get_settings

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / WORKERS_MARKER).write_text("2")
    monkeypatch.setenv("CHOREO_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CHOREO_WORKERS_PER_DOMAIN", raising=False)
    monkeypatch.setenv("CHOREO_DATABASE_SERVER", PG)
    get_settings.cache_clear()
    try:
        assert current_settings().workers_per_domain == 2
        # A shell without the stack's database server still finds its workers (to stop them).
        monkeypatch.delenv("CHOREO_DATABASE_SERVER")
        get_settings.cache_clear()
        assert "worker-payment-2" in process_names(current_settings())
    finally:
        get_settings.cache_clear()
