"""Secrets (broker passwords, the user service's bearer tokens): from an environment variable,
or, for local development, generated once into a file under the run folder that only its owner
may read. A secret is never printed or logged: callers get the value, nothing here writes it
anywhere but that file.

Two processes starting at once may both find no file: each writes its candidate to a private
temporary file and links it into place; the link fails for the second, which reads the first's.
"""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path

SECRETS_DIR = "secrets"


def secrets_dir(run_dir: Path | str) -> Path:
    """run_dir/secrets, created owner-only (0700) when it is not there."""
    path = Path(run_dir) / SECRETS_DIR
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)  # whatever the umask
        except FileExistsError:
            pass  # another process made it a moment ago
    return path


def secret_path(run_dir: Path | str, kind: str, owner: str) -> Path:
    """Where `secret` keeps `kind` of `owner` when its variable is not set:
    secrets/<kind>-<owner>."""
    return Path(run_dir) / SECRETS_DIR / f"{kind.lower()}-{owner}".replace("_", "-")


def env_name(kind: str, owner: str) -> str:
    """CHOREO_<KIND>_<OWNER>: CHOREO_BROKER_PASSWORD_ORDER, CHOREO_USERS_TOKEN_PAYMENT."""
    return f"CHOREO_{kind}_{owner}".upper().replace("-", "_").replace(".", "_")


def secret(run_dir: Path | str, kind: str, owner: str, *, create: bool = True) -> str | None:
    """The secret `kind` of `owner`: env_name(kind, owner) when set, else the file
    run_dir/secrets/<kind>-<owner> (generated once when `create`; None when absent and not)."""
    value = os.environ.get(env_name(kind, owner), "")
    if value:
        return value
    secrets_dir(run_dir)
    path = secret_path(run_dir, kind, owner)
    try:
        return _read(path)
    except FileNotFoundError:
        if not create:
            return None
    return _create(path)


def _read(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise FileNotFoundError(path)  # a torn write from a crash: generate again
    return value


def _create(path: Path, replace: bool = False) -> str:
    """A new secret in a private temporary file, then put in place atomically: linked (fails if
    another process got there first: theirs wins) or, with `replace`, renamed over the old one."""
    value = _random.token_urlsafe(24)  # 192 bits, URL- and AMQP-URI-safe
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_random.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return value
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read(path)
        return value
    finally:
        tmp.unlink(missing_ok=True)


def rotate(run_dir: Path | str, kind: str, owner: str) -> Path:
    """Replace the file's secret with a new one (its users must then be set up or restarted);
    a reader at that moment sees the old one or the new one, never none."""
    secrets_dir(run_dir)
    path = secret_path(run_dir, kind, owner)
    _create(path, replace=True)
    return path
