"""The `choreo` command line: a thin layer over choreo.ops (stack, workload, status, audit, chaos).

`base` holds the group, which loads each command's module when that command runs; `main` is
the entry point.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from choreo.cli.base import cli
from choreo.infra.tls import TLSRefused
from config.settings import get_settings


def settings_error(exc: ValidationError) -> str:
    """The first error of the settings as one line: the setting it is about, or (a check across
    settings, which names them itself) the check's own sentence."""
    first = exc.errors()[0]
    msg = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:
        return msg
    return f"setting CHOREO_{str(first['loc'][0]).upper()}: {msg}"


def main() -> None:
    try:
        get_settings()
    except ValidationError as exc:
        print(f"error: {settings_error(exc)}", file=sys.stderr)  # one line, never wrapped
        sys.exit(2)
    try:
        cli()
    except (
        TLSRefused
    ) as exc:  # a peer's certificate that cannot be verified: one line, not a traceback
        print(
            f"error: {exc}", file=sys.stderr
        )  # not rich: it would wrap the line at the terminal's width
        sys.exit(2)
