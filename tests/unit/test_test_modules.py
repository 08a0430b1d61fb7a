"""The suite's own layout: pytest imports test modules by their base name (the test folders are
not packages), so two test files with one name break collection of the whole run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_name_of_its_own():
    names = Counter(p.name for p in TESTS.glob("*/test_*.py"))
    assert sorted(n for n, count in names.items() if count > 1) == []
