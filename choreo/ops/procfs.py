"""Processes and ports as the kernel shows them: a process's command line or environment, whether
it is alive (a zombie is not), whether a loopback port answers. Reading /proc, never signalling."""

from __future__ import annotations

import socket
from pathlib import Path


def cmdline_or_environ(pid: int, what: str) -> list[str]:
    """/proc/<pid>/cmdline or environ, split at its NULs ([] once gone, or unreadable)."""
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
