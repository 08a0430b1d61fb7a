"""PostgreSQL over verified TLS from one setting: with CHOREO_DATABASE_CA_FILE every service's
database URL asks sslmode=verify-full, against a private PostgreSQL server of the test's own
(its own data folder and port, TLS only in pg_hba, a certificate from choreo's CA). Then a
service's tables are created and written over it; the wrong CA is refused; and a client that
does not ask for TLS is turned away by the server. The machine's own PostgreSQL is not touched."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    # Its own server whatever the pass: once is enough.
    pytest.mark.skipif(
        bool(os.environ.get("CHOREO_TEST_DATABASE_SERVER")), reason="runs in the SQLite pass only"
    ),
]
BINDIR = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), "")
RUN_AS = "postgres"  # the server refuses to run as root


def _as_server_user(args: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        args = ["runuser", "-u", RUN_AS, "--", *args]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)


_SERVERS: dict[str, subprocess.Popen] = {}


def _start(root: Path, files) -> str:
    """initdb and start a server under `root` (TLS only); its URL."""
    from choreo.ops.stack import free_port

    data = root / "data"
    data.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(root, RUN_AS)
        shutil.chown(data, RUN_AS)
    out = _as_server_user(
        [f"{BINDIR}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    )
    assert out.returncode == 0, out.stderr
    for src, name in ((files.node_cert, "server.crt"), (files.node_key, "server.key")):
        shutil.copy(src, data / name)
        os.chmod(data / name, 0o600)
        if os.geteuid() == 0:
            shutil.chown(data / name, RUN_AS)
    # TLS only: a connection without it matches no line of pg_hba and is refused.
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
    port = free_port()
    with open(root / "postgres.log", "wb") as log:
        _SERVERS[str(root)] = server = subprocess.Popen(
            ["runuser", "-u", RUN_AS, "--"] * (os.geteuid() == 0)
            + [
                f"{BINDIR}/postgres",
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
                "-c",
                "ssl_cert_file=server.crt",
                "-c",
                "ssl_key_file=server.key",
                "-c",
                "fsync=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while (
        _as_server_user([f"{BINDIR}/pg_isready", "-h", "127.0.0.1", "-p", str(port)]).returncode
        != 0
    ):
        assert server.poll() is None and time.monotonic() < deadline, (
            root / "postgres.log"
        ).read_text()
        time.sleep(0.2)
    return f"postgresql://postgres@127.0.0.1:{port}"


@pytest.fixture(scope="module")
def tls_postgres():
    from choreo.ops import tlsca

    if not os.path.exists(os.path.join(BINDIR, "initdb")) or (
        os.geteuid() == 0 and not shutil.which("runuser")
    ):
        pytest.skip("PostgreSQL's server binaries (initdb, postgres) are not installed")
    # Not under pytest's folder: the server's user must reach it (pytest's is owner-only).
    root = Path(tempfile.mkdtemp(prefix="choreo-pg-tls-"))
    try:
        files = tlsca.ensure(root / "tls", label="pg test")
        yield _start(root, files), files
    finally:
        if server := _SERVERS.pop(str(root), None):
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def test_every_database_url_verifies_the_server_and_a_service_runs_over_it(tls_postgres, tmp_path):
    from choreo.app.bootstrap import prepare
    from choreo.infra.db import dispose_engines, engine_for
    from config.settings import Settings

    server, files = tls_postgres
    settings = Settings(
        database_server=server,
        database_ca_file=str(files.ca),
        data_dir=tmp_path,
        database_prefix="tls",
    )
    url = settings.database_url("payment")
    assert "sslmode=verify-full" in url and f"sslrootcert={files.ca}".replace("/", "%2F") in url
    prepare(settings, ["payment"])
    with engine_for(settings, "payment").connect() as conn:
        assert (
            conn.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
            is True
        )
        assert conn.execute(text("SELECT count(*) FROM copies")).scalar() == 0
    dispose_engines(url)


def test_the_wrong_ca_and_a_clear_text_client_are_both_refused(tls_postgres, tmp_path):
    from choreo.ops import tlsca
    from config.settings import verified_database_url

    server, _files = tls_postgres
    wrong = tlsca.unrelated_ca(tmp_path / "wrong")
    for url, why in (
        (verified_database_url(f"{server}/postgres", str(wrong.ca)), "certificate verify failed"),
        (f"{server}/postgres?sslmode=disable", "no pg_hba.conf entry"),
    ):
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with pytest.raises(OperationalError, match=why):
            engine.connect()
        engine.dispose()
