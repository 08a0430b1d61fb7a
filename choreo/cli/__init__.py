"""The `choreo` command line: a thin layer over choreo.ops (stack, workload, status, audit, chaos).

`base` holds the group, which loads each command's module when that command runs; `main` is
the entry point.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from choreo.cli.base import cli, err
from choreo.infra.tls import TLSRefused
from config.settings import get_settings


def main() -> None:
    try:
        get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        err.print(f"error: setting CHOREO_{str(first['loc'][0]).upper()}: {first['msg']}")
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
