"""The sandbox deletes its broker users in one `rabbitmqctl eval`: the names it writes into that
Erlang expression are quoted, and a name choreo would never make is refused, not evaluated."""

from __future__ import annotations

import pytest

from choreo.devtools.sandbox import _erlang_string


def test_a_user_name_becomes_one_quoted_erlang_string():
    assert _erlang_string("choreo-test-1a2b-payment") == '"choreo-test-1a2b-payment"'
    assert _erlang_string('a"b\\c') == '"a\\"b\\\\c"'


@pytest.mark.parametrize("name", ["a\nb", "café", "x\x00"])
def test_a_name_with_control_or_non_ascii_characters_is_refused(name):
    with pytest.raises(ValueError, match="not a broker user name"):
        _erlang_string(name)
