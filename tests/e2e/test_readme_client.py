"""The manual's plain-pika client (docs/client.md, once the README's), run exactly as written,
places an order that completes at catalog prices."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session

from tests.helpers import settled

pytestmark = pytest.mark.e2e
CLIENT_DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def readme_client() -> str:
    text = CLIENT_DOC.read_text()
    block = re.search(
        r"<!-- client-example:start -->\s*```python\n(.*?)```\s*<!-- client-example:end -->",
        text,
        re.S,
    )
    assert block, "docs/client.md lost its client example"
    return block.group(1)


def test_the_readme_client_places_an_order_that_completes(settings, stack, tmp_path):
    from choreo.infra.db import engine_for
    from consumers.payment.tables import Charge

    script = tmp_path / "client.py"
    script.write_text(readme_client())
    # Only the broker's address comes from us; no choreo module is importable from there.
    from choreo.messaging.access import service_url

    env = {"PATH": os.environ["PATH"], "AMQP_URL": service_url(settings, "operator")}
    out = subprocess.run(
        [sys.executable, "-I", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    order_id = out.stdout.strip()
    assert settled(settings, [order_id])[order_id] == ("COMPLETED", None)
    with Session(engine_for(settings, "payment")) as s:
        assert s.get(Charge, order_id).amount_cents == 2 * 1299 + 799
