"""The user service's bearer tokens and request ids, without a server."""

from __future__ import annotations

import pytest

from choreo.world.users import CALLERS, Tokens, sane_request_id, token_env, token_file, users_token
from config.settings import DOMAINS


@pytest.fixture
def no_token_env(monkeypatch):
    for caller in CALLERS:
        monkeypatch.delenv(token_env(caller), raising=False)


def test_callers_are_the_domains_the_orchestrator_and_the_operator():
    assert (*DOMAINS, "orchestrator", "operator") == CALLERS
    assert token_env("notification") == "CHOREO_USERS_TOKEN_NOTIFICATION"


def test_each_caller_has_its_own_file_and_the_variable_wins(tmp_path, monkeypatch, no_token_env):
    tokens = {caller: users_token(tmp_path, caller) for caller in CALLERS}
    assert len(set(tokens.values())) == len(CALLERS)
    for caller, token in tokens.items():
        assert (
            token_file(tmp_path, caller).read_text().strip() == token
        )  # the path token_file names
        assert users_token(tmp_path, caller) == token  # generated once
    monkeypatch.setenv("CHOREO_USERS_TOKEN_ORDER", "from-env")
    assert users_token(tmp_path, "order") == "from-env"
    assert users_token(tmp_path / "elsewhere", "payment", create=False) is None


def test_tokens_name_their_caller_and_nothing_else_passes():
    t = Tokens({"order": "tok-order", "payment": "tok-payment"})
    assert t.caller("Bearer tok-order") == "order"
    assert t.caller("bearer tok-payment") == "payment"
    assert t.caller("  Bearer   tok-order  ") == "order"
    for refused in (
        None,
        "",
        "Bearer",
        "Bearer ",
        "tok-order",
        "Basic tok-order",
        "Bearer tok-orde",
        "Bearer tok-order2",
        "Bearer TOK-ORDER",
        "Bearer tök-order",
    ):
        assert t.caller(refused) is None, refused


def test_load_creates_every_missing_token(tmp_path, no_token_env):
    t = Tokens.load(tmp_path)
    for caller in CALLERS:
        assert t.caller(f"Bearer {users_token(tmp_path, caller, create=False)}") == caller


def test_a_request_id_is_kept_only_when_sane():
    assert sane_request_id("abc-123_X.y:z/1") == "abc-123_X.y:z/1"
    assert sane_request_id("x" * 128) == "x" * 128
    for bad in (None, "", " ", "x" * 129, "a\tb", "a\nb", "caf\u00e9", "\x7f"):
        assert sane_request_id(bad) is None, repr(bad)


def test_a_failing_lookup_is_a_json_500_with_its_request_id(tmp_path):
    from sqlalchemy import create_engine
    from starlette.testclient import TestClient

    from choreo.world.users import make_app

    engine = create_engine(
        f"sqlite:///{tmp_path / 'no-tables.db'}"
    )  # no customer table: the lookup fails
    with TestClient(
        make_app(engine, Tokens({"order": "t"}), metrics=False), raise_server_exceptions=False
    ) as c:
        resp = c.get(
            "/users/cust-1", headers={"Authorization": "Bearer t", "X-Request-ID": "r-500"}
        )
        assert resp.status_code == 500 and resp.json() == {"error": "internal error"}
        assert resp.headers["x-request-id"] == "r-500"
        assert c.get("/health").json()["service"] == "users"
