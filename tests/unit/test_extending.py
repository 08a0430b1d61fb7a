"""The recipes in docs/extending are exact: applied block by block to a copy of the project, the
toy domain (loyalty) and its event pass that copy's own unit tests (layering, contract, compose,
Prometheus configuration, docs, and the recipe's own handler tests).

A block's title says where it goes: a path (a new file); "PATH, end of NAME" (before the line
closing the bracketed NAME = ...); "PATH, end of file"; "PATH, before LINE" and "PATH, after
LINE" (the one line that reads LINE); "run" (commands, one a line, run in the copy).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("docs/extending/new-domain.md", "docs/extending/new-event.md")
BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```[ \t]*$', re.M | re.S)
SKIP = shutil.ignore_patterns(
    ".git", ".venv", ".venv-tools", "data", "run", "__pycache__", "site", "results", "*.db"
)


def blocks() -> list[tuple[str, str]]:
    """(title, body) of every titled block of the recipes, in order."""
    return [m.groups() for page in PAGES for m in BLOCK.finditer((ROOT / page).read_text())]


def the_line(lines: list[str], text: str) -> int:
    found = [n for n, line in enumerate(lines) if line.strip() == text]
    assert len(found) == 1, f"expected one line reading {text!r}, found {len(found)}"
    return found[0]


def end_of(lines: list[str], name: str) -> int:
    """The line closing the bracketed assignment NAME = ( ... ) / { ... } / [ ... ]."""
    start = next(n for n, line in enumerate(lines) if re.match(rf"{name}\b.*[=:]", line))
    return next(n for n in range(start + 1, len(lines)) if lines[n][:1] in ")]}")


def place(text: str, where: str, body: str) -> str:
    lines = text.splitlines(keepends=True)
    if where == "end of file":
        return text.rstrip("\n") + "\n\n\n" + body
    if where.startswith("end of "):
        at = end_of(lines, where.removeprefix("end of "))
    elif where.startswith("before "):
        at = the_line(lines, where.removeprefix("before "))
    elif where.startswith("after "):
        at = the_line(lines, where.removeprefix("after ")) + 1
    else:
        raise ValueError(f"a block title says where it goes; not {where!r}")
    return "".join([*lines[:at], body, *lines[at:]])


def apply(copy: Path, title: str, body: str, env: dict[str, str]) -> None:
    if title == "run":
        for command in body.splitlines():
            argv = shlex.split(command)
            argv[0] = sys.executable if argv[0].endswith("/python") else argv[0]
            done = subprocess.run(argv, cwd=copy, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{command}:\n{done.stdout}{done.stderr}"
        return
    path, _, where = title.partition(", ")
    target = copy / path
    if not where:
        assert not target.exists(), f"{path} exists already: a recipe creates only new files"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    else:
        target.write_text(place(target.read_text(), where, body))


def test_place_puts_a_block_where_its_title_says():
    text = 'A = (\n    "a",\n)\nB = 1\n'
    assert place(text, "end of A", '    "b",\n') == 'A = (\n    "a",\n    "b",\n)\nB = 1\n'
    assert place(text, "after B = 1", "C = 2\n").endswith("B = 1\nC = 2\n")
    assert place(text, "before B = 1", "C = 2\n").endswith(")\nC = 2\nB = 1\n")
    assert place(text, "end of file", "C = 2\n").endswith("B = 1\n\n\nC = 2\n")
    with pytest.raises(ValueError, match="says where it goes"):
        place(text, "somewhere", "")


def test_the_recipes_add_a_domain_and_an_event_that_pass_the_copys_unit_tests(tmp_path):
    found = blocks()
    titles = [title for title, _ in found]
    assert (
        "consumers/loyalty/handlers.py" in titles
        and "consumers/order/handlers.py, end of FACTS" in titles
    )
    copy = tmp_path / "choreo"
    shutil.copytree(ROOT, copy, ignore=SKIP)
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        # As in `make check`: no service is needed, so none may be reached.
        "CHOREO_BROKER_URL": "amqp://guest:guest@127.0.0.1:9//",
        "CHOREO_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    for title, body in found:
        apply(copy, title, body, env)
    # The recipe's own tests first (the domain's handler, the order's new fact), then every
    # unit test of the copy with the toy domain in it.
    for tests, expect in (("tests/unit/test_loyalty.py", "2 passed"), ("tests/unit", " passed")):
        run = subprocess.run(
            [sys.executable, "-m", "pytest", tests, "-q", "-p", "no:cacheprovider",
             "--ignore=tests/unit/test_extending.py"],
            cwd=copy, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0 and expect in run.stdout, run.stdout[-6000:] + run.stderr
    assert (copy / "schemas/payloads/loyalty.awarded.json").is_file()
