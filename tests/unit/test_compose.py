"""The compose files run a worker for every registered domain, on the port its settings give."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from config.settings import DOMAINS, Settings

ROOT = Path(__file__).resolve().parents[2]


def services(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())["services"]


@pytest.mark.parametrize(
    "name", ["docker-compose.yml", "docker-compose.cluster.yml", "docker-compose.tls.yml"]
)
def test_every_domain_has_a_service(name):
    missing = [d for d in DOMAINS if d not in services(name)]
    assert not missing, f"{name} has no service for {', '.join(missing)}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_domain_service_runs_its_worker_and_asks_its_own_health_port(domain):
    service = services("docker-compose.yml")[domain]
    assert service["command"] == ["worker", domain]
    port = Settings(health_port_base=9100).health_port(domain)  # compose: the default base
    assert f"http://127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"])


@pytest.mark.parametrize(
    "name", ["docker-compose.yml", "docker-compose.cluster.yml", "docker-compose.tls.yml"]
)
def test_the_queue_monitor_runs_beside_the_workers_on_its_own_port(name):
    assert "monitor" in services(name), f"{name} has no monitor service"
    if name == "docker-compose.yml":
        monitor = services(name)["monitor"]
        assert monitor["command"] == ["monitor"]
        port = Settings(monitor_port=9180).health_port("monitor")
        assert f"http://127.0.0.1:{port}/health" in " ".join(monitor["healthcheck"]["test"])


@pytest.mark.parametrize(
    "name", ["docker-compose.yml", "docker-compose.cluster.yml", "docker-compose.tls.yml"]
)
def test_every_database_is_upgraded_once_before_the_workers_start(name):
    """`choreo db upgrade` runs once, as a one-shot, and every process with a database waits for
    it: a worker on a database that is behind refuses to start (docs/operating/migrations.md)."""
    found = services(name)
    assert "db-upgrade" in found, f"{name} has no db-upgrade service"
    if name == "docker-compose.yml":
        assert found["db-upgrade"]["command"] == ["db", "upgrade"]
        assert found["db-upgrade"]["restart"] == "no"
    waiting = [*DOMAINS, "users"]
    if name != "docker-compose.tls.yml":  # the TLS overlay adds to the base's depends_on
        late = [s for s in waiting if "db-upgrade" not in found[s].get("depends_on", {})]
        assert late == [], f"{name}: {late} start before db-upgrade"
