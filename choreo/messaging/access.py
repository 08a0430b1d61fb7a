"""Least privilege on the broker: one user per service, what each may configure, write and read,
who owns which message type, and the idempotent set-up (`choreo broker setup`).

Every service connects as its own user, `<broker_user_prefix><service>` (with the namespace in
between when it is not the default: user_name), and stamps the AMQP
`user_id` property on what it publishes; RabbitMQ refuses a `user_id` that is not the
connection's user, so a consumer knows who really sent a message (`verified_sender`) and
dead-letters a fact whose type the sender does not own (`may_send`). Topic permissions on the
events exchange refuse most forgeries before they are routed at all. A copy a service makes of a
delivery (retry rung, dead letter) goes out under its own user: the original sender it names is
believed only where the service's own record of the copy proves it (choreo.app.copies).

What each user is granted (N the namespace, D a domain):

  domain D      configure  its own Celery remote-control queue, celery.pidbox, reply.celery.pidbox,
                           celeryev (Celery declares these; choreo's own queues and exchanges are
                           declared by the set-up, never by a worker)
                write      N.events (topic: only its own types, plus saga.dead_lettered),
                           N.dlx (topic: only key D), N.retry (topic: only D.<rung>),
                           celeryev (topic: task.* and worker.*: Flower's task events),
                           reply.celery.pidbox (answers to Flower), its pidbox queue (binding)
                read       N.D (its queue), its pidbox queue, celery.pidbox (binding)
  orchestrator  as a domain; it owns the commands
  operator      write N.events (topic: place_order only), no celeryev (clients send Flower no
                task.sent: tasks.app); read the DLQs
                and N.unrouted (peek, replay: a replay asks the broker to move a dead letter
                back, it never re-publishes it, so its sender stays the one who sent it); hear
                outcomes: configure, write and read server-named queues (amq.gen-*, declared
                exclusive by a client), read N.events (to bind to it) with topic read on the
                OUTCOMES keys only (order.completed, order.cancelled, order.needs_attention)
  client        a shop's program (docs/client.md): write N.events (topic: place_order only) and
                hear outcomes as the operator does; nothing else (no DLQ, no celeryev)
  flower        declares and reads its own celeryev.* queues (every task event), broadcasts on
                celery.pidbox and reads its replies: Flower's worker pages and control buttons.
                It can ask a worker to shut down (that is what Flower is for); it cannot send a
                single choreo message. Its `management` tag lets it read its vhost's queues
                through the management API (Flower's Broker tab), with these same permissions.
  (the set-up)  the bootstrap user of broker_url (guest on a local broker): creates the users,
                grants and the topology; no service ever connects as it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from choreo.infra import tls
from choreo.infra.secrets import secret, secret_path
from choreo.messaging.topology import Names
from config.settings import DOMAINS, Settings
from models.envelope import CLIENT, EMITTERS, PAYLOADS, SagaDeadLettered

# Every broker user choreo makes. "operator" is the CLI (choreo enqueue, status, dlq, ask);
# "client" a shop's own program: it places orders and hears their outcomes (docs/client.md).
SERVICES = (*DOMAINS, "orchestrator", "operator", "client", "flower")
PASSWORD = "broker_password"
# On a copy a domain publishes of a delivery (retry rung, dead letter): who sent the original
# (a claim its record proves: choreo.app.copies).
SENDER_HEADER = "x-choreo-sender"
UNVERIFIED = "-"
# On a dead letter an operator replays knowingly outside the dedup window (`choreo dlq replay
# --force-outside-window`): who forced it, and the replay run. It means something only on a copy
# the broker vouches the operator published (its user_id, which the broker checks against the
# connection's user); from any other publisher it is ignored (choreo.app.window).
FORCED_HEADER = "x-choreo-forced-replay"
OPERATOR = "operator"
DEAD_LETTER_NOTICE = SagaDeadLettered.routing_key


def owners(type_: str) -> frozenset[str]:
    """The services that may send a message of this type: its declaration says (models.envelope)."""
    kind = PAYLOADS.get(type_)
    return kind.owners if kind is not None else frozenset()


def may_send(service: str | None, type_: str) -> bool:
    return service is not None and service in owners(type_)


def speaks_for_itself(service: str | None, type_: str, payload: Mapping) -> bool:
    """Every emitter may send a dead-letter notice, but only about its own dead letters: a
    notice naming another domain is that domain's fact, not the sender's."""
    return type_ != DEAD_LETTER_NOTICE or payload.get("domain") == service


def _user_prefix(settings: Settings) -> str:
    """Grants name a namespace's queues and exchanges, and a user has one grant per vhost: a
    namespace other than the default has users of its own (choreo-shop-payment), so two
    namespaces in one vhost never overwrite each other's grants."""
    ns = "" if settings.namespace == "choreo" else f"{settings.namespace}-"
    return f"{settings.broker_user_prefix}{ns}"


def user_name(settings: Settings, service: str) -> str:
    return f"{_user_prefix(settings)}{service}"


def service_of(settings: Settings, user_id: str | None) -> str | None:
    """The service a broker user is, or None (no user_id, or not one of ours)."""
    prefix = _user_prefix(settings)
    if not user_id or not user_id.startswith(prefix):
        return None
    service = user_id[len(prefix) :]
    return service if service in SERVICES else None


def verified_sender(
    settings: Settings, own: str, user_id: str | None, headers: Mapping
) -> tuple[str | None, str | None]:
    """(sender, claim) of a delivery. `sender`: the service the broker vouches for (its user_id),
    or None. On a copy this service published of a delivery (its own user_id and the copy's
    SENDER_HEADER: a retry rung, a dead letter moved back by a replay) the broker vouches only
    that this service's user published it, which anyone holding its password can: `sender` is
    None and `claim` the original sender the copy names, to be believed only once the service's
    own record of that copy proves it (choreo.app.copies). A copy of an unverified delivery
    claims nobody (UNVERIFIED)."""
    service = service_of(settings, user_id)
    copied = service == own or forced_by_operator(settings, user_id, headers)
    if service is not None and copied and SENDER_HEADER in headers:
        claimed = headers[SENDER_HEADER]
        if isinstance(claimed, bytes):
            claimed = claimed.decode(errors="replace")
        return None, (claimed if claimed in SERVICES else None)
    return (
        service,
        None,
    )  # its own fresh message (the order hears its own saga.dead_lettered) or another's


def forced_by_operator(settings: Settings, user_id: str | None, headers: Mapping) -> bool:
    """A dead letter the operator replayed outside the dedup window, knowingly: the mark, on a
    copy the broker vouches the operator's user published. Like a domain's own copy, the original
    sender it names is believed only once the domain's record of the copy proves it."""
    return FORCED_HEADER in headers and service_of(settings, user_id) == OPERATOR


def sender_header(sender: str | None) -> dict:
    """What a copy of a delivery carries (always: a copy of one with no verified sender says so)."""
    return {SENDER_HEADER: sender or UNVERIFIED}


def password(settings: Settings, service: str) -> str:
    """The service's broker password: CHOREO_BROKER_PASSWORD_<SERVICE>, else its file
    (password_file)."""
    value = secret(settings.run_dir, PASSWORD, service)
    assert value is not None  # secret() generates it when absent (create=True)
    return value


def password_file(settings: Settings, service: str):
    return secret_path(settings.run_dir, PASSWORD, service)


def broker_urls(broker_url: str) -> list[str]:
    """The nodes of broker_url: one URL, or a cluster's, joined by ";" (kombu's failover form)."""
    urls = [u.strip() for u in broker_url.split(";") if u.strip()]
    if not urls:
        raise ValueError("broker_url is empty")
    return urls


def service_url(settings: Settings, service: str) -> str:
    """broker_url (every node's host, port, vhost, options) with the service's own user and
    password."""
    if service not in SERVICES:
        raise ValueError(f"unknown broker user {service!r}; one of {', '.join(SERVICES)}")
    name = quote(user_name(settings, service), safe="")
    user = f"{name}:{quote(password(settings, service), safe='')}"
    out = []
    for url in broker_urls(settings.broker_url):
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
        out.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    return ";".join(out)


def vhost_of(broker_url: str) -> str:
    """The vhost (every node of a cluster's list names the same one)."""
    path = urlsplit(broker_urls(broker_url)[0]).path
    return unquote(path[1:]) if path and path != "/" else "/"


# -- grants ---------------------------------------------------------------------------------

NOTHING = "^$"
# A queue the broker names (queue.declare with an empty name): a client's own, to hear outcomes
# on. A client cannot choose such a name (the broker refuses "amq." names), so this grants no
# named queue; RabbitMQ checks configure on the name it generates.
SERVER_NAMED = r"amq\.gen-.+"
# The outcome events a client may hear (topic read on the events exchange): how an order ended,
# or that it needs an operator (docs/client.md, "Hearing outcomes").
OUTCOMES = ("order.completed", "order.cancelled", "order.needs_attention")


def _one_of(names: Iterable[str], raw: Iterable[str] = ()) -> str:
    alternatives = sorted({re.escape(n) for n in names} | set(raw))
    return f"^({'|'.join(alternatives)})$" if alternatives else NOTHING


@dataclass(frozen=True)
class Grant:
    configure: str = NOTHING
    write: str = NOTHING
    read: str = NOTHING
    # exchange -> (write, read) routing-key patterns
    topics: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def node_name(settings: Settings, domain: str, index: int = 1) -> str:
    """A worker's Celery node name (before @host): unique per vhost (Flower and `celery inspect`
    tell workers apart by it; its pidbox queue's name adds a token per connection: tasks.remote);
    a domain's further workers (`index` 2, 3...) add -<index>."""
    base = domain if settings.namespace == "choreo" else f"{domain}.{settings.namespace}"
    return base if index == 1 else f"{base}-{index}"


def grants(settings: Settings, hears: Mapping[str, Iterable[str]]) -> dict[str, Grant]:
    """Each service's grant on the vhost; `hears`: domain -> the types bound to its queue, over
    every saga mode (a worker of either mode runs under the same user)."""
    n = Names(settings.namespace)
    out: dict[str, Grant] = {}
    for d in EMITTERS:
        pidbox = rf"{re.escape(node_name(settings, d))}(-[0-9]+)?@.+\.celery\.pidbox"
        sends = sorted(t for t in PAYLOADS if may_send(d, t))
        out[d] = Grant(
            configure=_one_of(["celery.pidbox", "reply.celery.pidbox", "celeryev"], [pidbox]),
            write=_one_of(
                [n.events, n.dlx, n.retry_exchange, "celeryev", "reply.celery.pidbox"], [pidbox]
            ),
            read=_one_of([n.queue(d), "celery.pidbox"], [pidbox]),
            topics={
                n.events: (_one_of(sends), _one_of(hears.get(d, ()))),
                n.dlx: (_one_of([d]), NOTHING),
                n.retry_exchange: (rf"^{re.escape(d)}\.[0-9]+$", NOTHING),
                "celeryev": (r"^(task|worker)\..+$", NOTHING),
            },
        )
    out["operator"] = Grant(
        configure=_one_of([], [SERVER_NAMED]),
        # The retry exchange: a forced replay's copy, to each domain's first rung only.
        write=_one_of([n.events, n.retry_exchange], [SERVER_NAMED]),
        read=_one_of([n.events, n.unrouted, *(n.dlq(d) for d in EMITTERS)], [SERVER_NAMED]),
        topics={
            n.events: (_one_of(["place_order"]), _one_of(OUTCOMES)),
            n.dlx: (NOTHING, NOTHING),
            n.retry_exchange: (_one_of(n.retry_key(d, 1) for d in EMITTERS), NOTHING),
            "celeryev": (NOTHING, NOTHING),
        },
    )
    out[CLIENT] = Grant(
        configure=_one_of([], [SERVER_NAMED]),
        write=_one_of([n.events], [SERVER_NAMED]),
        read=_one_of([n.events], [SERVER_NAMED]),
        topics={
            n.events: (_one_of(t for t in PAYLOADS if may_send(CLIENT, t)), _one_of(OUTCOMES)),
            n.dlx: (NOTHING, NOTHING),
            n.retry_exchange: (NOTHING, NOTHING),
            "celeryev": (NOTHING, NOTHING),
        },
    )
    flower_own = [r"celeryev\..+", r".+\.reply\.celery\.pidbox"]
    out["flower"] = Grant(
        configure=_one_of(["celeryev", "celery.pidbox", "reply.celery.pidbox"], flower_own),
        write=_one_of(["celery.pidbox"], flower_own),
        read=_one_of(["celeryev", "reply.celery.pidbox"], flower_own),
        topics={
            n.events: (NOTHING, NOTHING),
            n.dlx: (NOTHING, NOTHING),
            n.retry_exchange: (NOTHING, NOTHING),
            "celeryev": (NOTHING, ".*"),
        },
    )
    return out


def _password_hash(value: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + value.encode()).digest()).decode()


def definitions(settings: Settings, hears: Mapping[str, Iterable[str]]) -> dict:
    """Users (hashed passwords), permissions and topic permissions, as RabbitMQ's definitions
    JSON: imported in one call, so no password is ever on a command line or on disk there."""
    vhost = vhost_of(settings.broker_url)
    users, perms, topics = [], [], []
    for service, g in grants(settings, hears).items():
        user = user_name(settings, service)
        users.append(
            {
                "name": user,
                "password_hash": _password_hash(password(settings, service)),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                # Flower's Broker tab reads its vhost's queues through the management API.
                "tags": ["management"] if service == "flower" else [],
            }
        )
        perms.append(
            {
                "user": user,
                "vhost": vhost,
                "configure": g.configure,
                "write": g.write,
                "read": g.read,
            }
        )
        topics += [
            {"user": user, "vhost": vhost, "exchange": x, "write": w, "read": r}
            for x, (w, r) in g.topics.items()
        ]
    return {"users": users, "permissions": perms, "topic_permissions": topics}


class SetupFailed(RuntimeError):
    pass


def apply(settings: Settings, hears: Mapping[str, Iterable[str]]) -> list[str]:
    """Create or update every service's user and grants; returns the user names. Idempotent:
    passwords are the same secrets each time, so running processes keep their connections.

    With broker_admin_api (a management API, e.g. http://rabbitmq:15672, as the bootstrap user
    of broker_url) through its /api/definitions; else with the local node's rabbitmqctl, or with
    broker_cluster_dir the one in that folder (`choreo cluster up` writes it: a node of that
    private cluster, with its cookie)."""
    doc = definitions(settings, hears)
    if len(broker_urls(settings.broker_url)) > 1 and not (
        settings.broker_cluster_dir or settings.broker_admin_api
    ):
        # Else the local rabbitmqctl would set up this machine's own node, not the listed cluster.
        raise SetupFailed(
            "broker_url lists several nodes: set CHOREO_BROKER_CLUSTER_DIR (a `choreo cluster up` "
            "folder) or CHOREO_BROKER_ADMIN_API (one node's management API) to set them up"
        )
    if settings.broker_admin_api or not (
        settings.broker_cluster_dir or shutil.which("rabbitmqctl")
    ):
        # A broker elsewhere (a container): its management API, by default on its host's 15672.
        host = urlsplit(broker_urls(settings.broker_url)[0]).hostname or "127.0.0.1"
        _post_definitions(settings, doc, settings.broker_admin_api or f"http://{host}:15672")
    else:
        ctl = (
            os.path.join(settings.broker_cluster_dir, "rabbitmqctl")
            if settings.broker_cluster_dir
            else "rabbitmqctl"
        )
        out = subprocess.run(
            [ctl, "-q", "import_definitions", "--format", "json"],
            input=json.dumps(doc),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise SetupFailed(
                f"rabbitmqctl import_definitions failed ({out.returncode}): "
                f"{(out.stderr or out.stdout).strip()[:300]}"
            )
    return [u["name"] for u in doc["users"]]


def _post_definitions(settings: Settings, doc: dict, api: str) -> None:
    """POST the definitions to a management API (users are global: the whole-broker import)."""
    import httpx

    parts = urlsplit(broker_urls(settings.broker_url)[0])
    auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    try:
        verify = tls.client_context(settings.broker_ca_file) if api.startswith("https") else True
        resp = httpx.post(
            f"{api.rstrip('/')}/api/definitions", json=doc, auth=auth, timeout=30, verify=verify
        )
    except httpx.HTTPError as exc:
        raise SetupFailed(f"POST {api}/api/definitions failed: {exc!r}") from None
    if resp.status_code >= 300:
        raise SetupFailed(
            f"POST {api}/api/definitions answered {resp.status_code}: {resp.text[:300]}"
        )


def hears_of(topo) -> dict[str, set[str]]:
    """domain -> every type bound to its queue in any saga mode (one user serves both modes)."""
    hears: dict[str, set[str]] = {}
    for mode in topo.hears:
        for d in topo.hears[mode]:
            hears.setdefault(d, set()).update(topo.routing_keys(d, mode))
    return hears


def setup(settings: Settings, topo) -> list[str]:
    """`choreo broker setup`: the users and grants, then `topo` (a choreo.messaging.topology.
    Topology), as the bootstrap user of broker_url. Returns the user names."""
    users = apply(settings, hears_of(topo))
    topo.declare()
    return users
