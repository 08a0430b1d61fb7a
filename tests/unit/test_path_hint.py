"""`make demo` runs the virtualenv's `choreo`; when the shell would not find that one, the demo and
`choreo up` end with the one line that puts it on PATH."""

from __future__ import annotations

import os

from choreo.cli.base import path_hint


def _venv(tmp_path):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "choreo"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (bin_dir / "activate").write_text("")
    return bin_dir, exe


def test_a_venv_choreo_not_on_path_says_how_to_activate(tmp_path, monkeypatch):
    bin_dir, exe = _venv(tmp_path)
    monkeypatch.chdir(tmp_path)
    hint = path_hint(str(exe), path=str(tmp_path / "elsewhere"))
    assert hint is not None
    assert "source .venv/bin/activate" in hint


def test_nothing_to_say_once_path_finds_this_choreo(tmp_path):
    bin_dir, exe = _venv(tmp_path)
    assert path_hint(str(exe), path=os.pathsep.join(["/nonexistent", str(bin_dir)])) is None


def test_nothing_to_say_when_not_run_as_the_choreo_script(tmp_path):
    assert path_hint("/usr/lib/python3/choreo/__main__.py", path="") is None
