"""`choreo tls init` (docker-compose.tls.yml's tls-setup): certificates naming the deployment's
hosts, made once, the servers' copy owned by their user; asking for other hosts re-issues."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509

from choreo.cli.tls import tls


def _init(folder, *args) -> dict:
    out = CliRunner().invoke(tls, ["init", "--dir", str(folder), *args])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def _sans(path) -> set[str]:
    san = (
        x509.load_pem_x509_certificate(Path(path).read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    return set(san.get_values_for_type(x509.DNSName)) | {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


def test_the_servers_certificate_names_the_hosts_and_their_copy_is_theirs(tmp_path):
    made = _init(
        tmp_path, "--host", "rabbitmq", "--host", "redis", "--server-owner", str(os.getuid())
    )
    assert _sans(made["node_cert_file"]) == {"rabbitmq", "redis", "localhost", "127.0.0.1"}
    for key in ("server_ca_file", "server_cert_file", "server_key_file"):
        st = os.stat(made[key])
        assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o600, key
    assert stat.S_IMODE(os.stat(tmp_path / "private").st_mode) == 0o700
    assert Path(made["server_key_file"]).read_bytes() == Path(made["node_key_file"]).read_bytes()


def test_made_once_and_re_issued_for_other_hosts(tmp_path):
    first = _init(tmp_path, "--host", "rabbitmq")
    cert = Path(first["node_cert_file"]).read_bytes()
    ca = Path(first["ca_file"]).read_bytes()
    _init(tmp_path, "--host", "rabbitmq")
    assert Path(first["node_cert_file"]).read_bytes() == cert  # nothing changed
    _init(tmp_path, "--host", "rabbitmq", "--host", "broker.example")
    assert _sans(first["node_cert_file"]) == {
        "rabbitmq",
        "broker.example",
        "localhost",
        "127.0.0.1",
    }
    assert Path(first["ca_file"]).read_bytes() == ca  # the same CA signs it
