"""Settings: database URLs per service, the retry ladder, and validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import SERVICES, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Start from the defaults, whatever CHOREO_* variables the shell running the tests has."""
    for name in list(os.environ):
        if name.upper().startswith("CHOREO_"):
            monkeypatch.delenv(name)


def test_database_url_defaults_to_a_sqlite_file_per_service_under_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url("order") == f"sqlite:///{tmp_path.resolve() / 'order.db'}"
    assert settings.database_url("payment") == f"sqlite:///{tmp_path.resolve() / 'payment.db'}"


def test_default_database_path_is_absolute_even_for_a_relative_data_dir():
    url = Settings(data_dir=Path("data")).database_url("user")
    path = Path(url.removeprefix("sqlite:///"))
    assert path.is_absolute()
    assert path == (Path("data") / "user.db").resolve()


def test_every_service_gets_its_own_default_database(tmp_path):
    urls = {Settings(data_dir=tmp_path).database_url(s) for s in SERVICES}
    assert len(urls) == len(SERVICES)  # every domain, user, gateway, orchestrator, operator


def test_a_per_service_database_url_overrides_the_default(tmp_path):
    settings = Settings(
        data_dir=tmp_path,
        payment_database_url="postgresql://db/pay",
        database_server="postgresql://server",
    )
    assert settings.database_url("payment") == "postgresql://db/pay"
    assert settings.database_url("order") == "postgresql://server/choreo_order"


def test_a_per_service_database_url_can_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CHOREO_GATEWAY_DATABASE_URL", "sqlite:///elsewhere.db")
    assert Settings(data_dir=tmp_path).database_url("gateway") == "sqlite:///elsewhere.db"


@pytest.mark.parametrize(
    "server", ["postgresql+psycopg://u:p@db:5432", "postgresql+psycopg://u:p@db:5432/"]
)
def test_database_server_gives_one_database_per_service(server):
    settings = Settings(database_server=server)
    assert settings.database_url("inventory") == "postgresql+psycopg://u:p@db:5432/choreo_inventory"
    assert (
        settings.database_url("notification")
        == "postgresql+psycopg://u:p@db:5432/choreo_notification"
    )


def test_database_url_rejects_an_unknown_service():
    with pytest.raises(ValueError, match="unknown service 'billing'"):
        Settings().database_url("billing")


def test_retry_delay_doubles_from_the_initial_delay():
    settings = Settings()
    assert [settings.retry_delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_retry_delay_is_capped_at_retry_max_delay():
    settings = Settings(retry_initial_delay=1.0, retry_max_delay=3.0)
    assert [settings.retry_delay(n) for n in (1, 2, 3, 4, 20)] == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_retry_delay_default_cap_is_sixty_seconds():
    assert Settings().retry_delay(20) == 60.0


def test_retry_delay_scales_with_the_initial_delay():
    assert Settings(retry_initial_delay=0.5).retry_delay(3) == 2.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retry_max_attempts", 21),
        ("retry_max_attempts", -1),
        ("retry_initial_delay", 0),
        ("retry_jitter", 1.0),
        ("prefetch_multiplier", 0),
        ("delivery_limit", 0),
        ("publish_confirm_timeout", 0),
    ],
)
def test_out_of_range_numbers_are_rejected(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_users_url_defaults_to_host_and_port_unless_given():
    assert (
        Settings(user_service_host="users", user_service_port=9000).users_url == "http://users:9000"
    )
    assert Settings(user_service_url="https://u.example").users_url == "https://u.example"
