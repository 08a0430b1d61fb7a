"""The namespace claim is keyed by what two checkouts would share: the Redis prefix and the
broker users' names."""

from __future__ import annotations

from choreo.ops import owner
from config.settings import Settings

DEFAULTS = {"redis_prefix": "choreo", "broker_user_prefix": "choreo-", "namespace": "choreo"}


def test_the_claim_names_the_broker_users_a_stack_sets_up():
    assert owner.key(Settings(**DEFAULTS)) == "choreo:owner:choreo-"
    assert owner.key(Settings(**{**DEFAULTS, "namespace": "shop"})) == "choreo:owner:choreo-shop-"
    # A test or chaos sandbox: its own prefix and users, so never another checkout's claim.
    sandbox = Settings(**{**DEFAULTS, "redis_prefix": "t-abc", "broker_user_prefix": "t-abc-"})
    assert owner.key(sandbox) == "t-abc:owner:t-abc-"


def test_the_refusal_is_one_line_naming_the_holder_and_the_way_out():
    line = owner.refusal(Settings(**DEFAULTS), "/work/main/run")
    assert "\n" not in line and "/work/main/run" in line
    assert "CHOREO_NAMESPACE=" in line and "--take-namespace" in line
