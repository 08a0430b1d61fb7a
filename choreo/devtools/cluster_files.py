"""What a private RabbitMQ node of choreo.devtools.cluster is made of on disk: its rabbitmq.conf
(plain, or amqps-only with HTTPS management), and with TLS the Erlang distribution flags and optfile
that put node-to-node and rabbitmqctl traffic over TLS, verified both ways (RabbitMQ's "Securing
Cluster (Inter-node) and CLI Tool Communication with TLS", strategy two)."""

from __future__ import annotations

import os
import secrets
import shlex
import string
import sys
from pathlib import Path

from choreo.ops import tlsca

LOOPBACK = "{127,0,0,1}"
# Modest nodes: publishers blocked above 512 MiB; the Raft log (in memory too) rolls at 64 MB, not
# 512.
COMMON_CONF = """\
cluster_name = {tag}
vm_memory_high_watermark.absolute = 512MiB
raft.wal_max_size_bytes = 64000000
"""
CONF = (
    """\
listeners.tcp.1 = 127.0.0.1:{amqp}
management.tcp.ip = 127.0.0.1
management.tcp.port = {mgmt}
"""
    + COMMON_CONF
)
# With TLS: no plain AMQP listener at all, amqps on the AMQP port; a client certificate is checked
# when one is shown (verify_peer) but not required (passwords still authenticate); HTTPS management.
TLS_CONF = (
    """\
listeners.tcp = none
listeners.ssl.1 = 127.0.0.1:{amqp}
ssl_options.cacertfile = {ca}
ssl_options.certfile = {cert}
ssl_options.keyfile = {key}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
management.ssl.ip = 127.0.0.1
management.ssl.port = {mgmt}
management.ssl.cacertfile = {ca}
management.ssl.certfile = {cert}
management.ssl.keyfile = {key}
"""
    + COMMON_CONF
)
TLS_DIR = "tls"
DIST_OPTFILE = "inter_node_tls.config"  # the nodes' and rabbitmqctl's -ssl_dist_optfile, in TLS_DIR


def node_conf(tag: str, ports: dict[str, int], tls: tlsca.TlsFiles | None) -> str:
    """A node's rabbitmq.conf; `ports`: its amqp and mgmt ports; `tls`: the cluster's files, or
    None."""
    if tls is None:
        return CONF.format(tag=tag, **ports)
    return TLS_CONF.format(tag=tag, ca=tls.ca, cert=tls.node_cert, key=tls.node_key, **ports)


def dist_args(tls_folder: Path | None) -> str:
    """Erlang flags for distribution, the nodes' and rabbitmqctl's alike: on loopback; over TLS
    with the optfile (server and client options) when the cluster has TLS."""
    args = f"-kernel inet_dist_use_interface {LOOPBACK}"
    if tls_folder is not None:
        args += f" -proto_dist inet_tls -ssl_dist_optfile {tls_folder / DIST_OPTFILE}"
    return args


def _erl_string(text: str) -> str:
    """`text` inside an Erlang string literal's quotes."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def write_dist_optfile(files: tlsca.TlsFiles, who: str) -> None:
    """The -ssl_dist_optfile (owner-only): every node and rabbitmqctl shows the node certificate
    and requires the peer's, signed by the CA, both ways (a node dials its peers, rabbitmqctl
    dials a node)."""
    common = [("cacertfile", files.ca), ("certfile", files.node_cert), ("keyfile", files.node_key)]

    def opts(*extra: str) -> str:
        return ",\n    ".join(
            [
                *(f'{{{k}, "{_erl_string(str(v))}"}}' for k, v in common),
                "{verify, verify_peer}",
                "{secure_renegotiate, true}",
                *extra,
            ]
        )

    tlsca.write_private(
        files.folder / DIST_OPTFILE,
        (
            f"%% Erlang distribution over TLS (-ssl_dist_optfile) for {who}\n"
            f"[{{server, [\n    {opts('{fail_if_no_peer_cert, true}')}]}},\n"
            f" {{client, [\n    {opts()}]}}].\n"
        ).encode(),
    )


def write_cookie(base_dir: Path) -> None:
    """The cluster's Erlang cookie, made once, owner-read-only from its first byte."""
    cookie = base_dir / ".erlang.cookie"
    if not cookie.exists():
        with os.fdopen(os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "w") as f:
            f.write(
                "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(32))
            )


def write_node(folder: Path, conf: str) -> None:
    """A node's folder: its log folder, rabbitmq.conf, plugins (management) and advanced.config."""
    (folder / "log").mkdir(parents=True, exist_ok=True)
    (folder / "rabbitmq.conf").write_text(conf)
    (folder / "enabled_plugins").write_text("[rabbitmq_management].\n")
    # At-least-once dead letters (the retry rungs) left unconfirmed by a leader change are sent
    # again after 5 s, not RabbitMQ's 180.
    (folder / "advanced.config").write_text(
        "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].\n"
    )


def write_ctl_wrapper(path: Path, base_dir: Path) -> None:
    """The folder's `rabbitmqctl`: `choreo cluster ctl` on a running node of this cluster."""
    path.write_text(
        "#!/bin/sh\n# rabbitmqctl on a running node of this cluster\n"
        f"exec {shlex.quote(sys.executable)} "
        f'-m choreo cluster ctl --dir {shlex.quote(str(base_dir))} "$@"\n'
    )
    path.chmod(0o700)


def tls_status(files: tlsca.TlsFiles | None, amqps_ports: list[int]) -> dict:
    """What a client needs to know of a cluster's TLS ({"enabled": False} without)."""
    if files is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "ca_file": str(files.ca),
        "cert_file": str(files.client_cert),
        "key_file": str(files.client_key),
        "amqps_ports": amqps_ports,
        "management": "https",
        "inter_node": "inet_tls",
        "plain_amqp": False,
    }


def client_tls_env(files: tlsca.TlsFiles) -> dict[str, str]:
    """The CHOREO_* settings that verify the cluster by its CA and show the client certificate."""
    return {
        "CHOREO_BROKER_CA_FILE": str(files.ca),
        "CHOREO_BROKER_CERT_FILE": str(files.client_cert),
        "CHOREO_BROKER_KEY_FILE": str(files.client_key),
    }
