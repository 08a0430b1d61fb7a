"""TLS for every connection that may leave the host, from settings: the broker (`amqps://`),
Redis (`rediss://`) and PostgreSQL (`sslmode=verify-full`: config.settings.verified_database_url,
which every database URL goes through); and one clear line when a peer's
certificate cannot be verified.

Each peer's certificate is verified against a CA file (the system's CAs when none is given) and
its host name is checked; a client certificate is sent when one is configured. There is no
setting that turns verification off: a TLS connection that does not verify its peer protects
the password from no one who can sit in the middle.

kombu keeps the host name it verifies from its first connection (it fills `server_hostname` into
the one options dict the app shares): every node of a cluster should present a certificate that
names every node's host (`choreo cluster up --tls` makes one naming localhost and 127.0.0.1).
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

from config.settings import Settings

AMQPS_PORT = 5671


class TLSRefused(RuntimeError):
    """A peer's certificate could not be verified, or TLS is asked for without a URL that uses it:
    the message is the one line an operator needs."""


def _broker_nodes(settings: Settings) -> list[str]:
    return [u.strip() for u in settings.broker_url.split(";") if u.strip()]


def broker_uses_tls(settings: Settings) -> bool:
    """Every node's URL is amqps:// (a mix is refused: one node in clear text leaks the
    password)."""
    schemes = {urlsplit(u).scheme for u in _broker_nodes(settings)}
    if "amqps" in schemes and schemes != {"amqps"}:
        raise TLSRefused(
            f"broker_url mixes amqps:// and {', '.join(sorted(schemes - {'amqps'}))}:// nodes: "
            "every node must use TLS, or none"
        )
    return schemes == {"amqps"}


def client_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """A client context that verifies the peer (CERT_REQUIRED, host name checked)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


def broker_context(settings: Settings) -> ssl.SSLContext:
    return client_context(
        settings.broker_ca_file, settings.broker_cert_file, settings.broker_key_file
    )


def kombu_ssl(settings: Settings) -> dict | bool:
    """kombu's (py-amqp's) `ssl` options for broker_url: False when it does not use TLS. A new
    dict each call: kombu writes the first node's host name into the one it is given."""
    if not broker_uses_tls(settings):
        return False
    opts: dict = {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": None,  # None: the URL's host (kombu)
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
    }
    if settings.broker_ca_file:
        opts["ca_certs"] = settings.broker_ca_file
    if settings.broker_cert_file:
        opts.update(certfile=settings.broker_cert_file, keyfile=settings.broker_key_file or None)
    return opts


def check_broker(settings: Settings, timeout: float = 5.0) -> None:
    """A TLS handshake with every node that answers, before anything else connects: a certificate
    that cannot be verified raises TLSRefused with one line (kombu would retry it for ever, and
    pika hides it in a list of connection attempts). A node that does not answer is left to the
    clients' own failover."""
    if not broker_uses_tls(settings):
        return
    ctx = broker_context(settings)
    for url in _broker_nodes(settings):
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or AMQPS_PORT
        try:
            with (
                socket.create_connection((host, port), timeout=timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=host),
            ):
                pass
        except ssl.SSLCertVerificationError as exc:
            raise TLSRefused(
                f"TLS: the broker at {host}:{port} presented a certificate that cannot be verified "
                f"against {settings.broker_ca_file or 'the system CAs'} "
                f"(CHOREO_BROKER_CA_FILE): {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            raise TLSRefused(
                f"TLS: handshake with the broker at {host}:{port} failed: {exc.reason or exc}"
            ) from None
        except OSError:
            continue  # down or unreachable: not a TLS question


def redis_options(settings: Settings) -> dict:
    """redis-py keyword arguments for redis_url: with rediss://, the peer verified against
    redis_ca_file (else the system CAs) and its host name checked."""
    if urlsplit(settings.redis_url).scheme != "rediss":
        return {}
    opts = {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }
    if settings.redis_ca_file:
        opts["ssl_ca_certs"] = settings.redis_ca_file
    if settings.redis_cert_file:
        opts.update(
            ssl_certfile=settings.redis_cert_file, ssl_keyfile=settings.redis_key_file or None
        )
    return opts
