"""The protocol guard: what a delivery must look like before Celery is allowed to read it.

Celery trusts the task protocol. A body of the wrong shape (`[]`, `42`, a list of two) or a
`task` header without an `id` raises inside its own request handling, in the consumer, and
the whole worker dies; the message goes back to the queue and kills the next worker too.
Every delivery passes `check` first (tasks.worker.BatchConsumer, which consumes the domain's
queue in Celery's place). What fails it goes to the domain's DLQ with the reason; what passes
goes on with only the headers Celery and choreo understand, so no header can steer anything into
scheduling (`eta`), dropping (`expires`) or sending more tasks (`chain`, `callbacks`) on a
client's say-so.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from models.envelope import EMBED_KEYS

MAX_ID = 128
MAX_TEXT = 1000


class Malformed(ValueError):
    """The delivery cannot be a choreo task message; the text says why (the DLQ reason)."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_attempts: int


def _optional_text(name: str, value: Any, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed(f"header {name!r} must be a string or null, got {type(value).__name__}")
    return value[:limit]


def _nonneg_int(name: str, value: Any, top: int | None = None) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Malformed(f"header {name!r} must be a whole number >= 0, got {value!r:.60}")
    if top is not None and value > top:
        raise Malformed(f"header {name!r} is {value}, over its limit of {top}")
    return value


def _must_be_null(name: str, value: Any, why: str) -> None:
    if value is not None:
        raise Malformed(f"header {name!r} must be null or absent ({why}), got {value!r:.60}")


def _task_and_id(headers: dict, known: Container[str]) -> tuple[str, str]:
    """The message type (one this domain hears) and the event id."""
    task = headers.get("task")
    if task is None:
        raise Malformed("not a choreo message (no task header)")
    if not isinstance(task, str) or not task or len(task) > MAX_ID:
        raise Malformed(f"header 'task' must be a message type name, got {task!r:.60}")
    if task not in known:
        raise Malformed(f"unknown message type {task!r} for this domain")
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID:
        what = "missing" if task_id is None else f"{task_id!r:.60}"
        raise Malformed(
            f"header 'id' must be a string of 1-{MAX_ID} characters (the event id), got {what}"
        )
    return task, task_id


def _check_celery_options(headers: dict) -> None:
    """Celery's own fields that could make it schedule, drop or limit a task: only their
    defaults pass."""
    lang = headers.get("lang")
    if lang not in (None, "py"):
        raise Malformed(f"header 'lang' must be 'py' or absent, got {lang!r:.60}")
    _must_be_null(
        "eta",
        headers.get("eta"),
        "choreo never holds a message in the worker; retries wait in the broker",
    )
    _must_be_null(
        "expires",
        headers.get("expires"),
        "a choreo message is processed or dead-lettered, never dropped",
    )
    timelimit = headers.get("timelimit")
    if timelimit is not None and (
        not isinstance(timelimit, (list, tuple)) or list(timelimit) != [None, None]
    ):
        raise Malformed(f"header 'timelimit' must be null or [null, null], got {timelimit!r:.60}")
    ignore_result = headers.get("ignore_result")
    if ignore_result is not None and not isinstance(ignore_result, bool):
        raise Malformed(f"header 'ignore_result' must be a boolean, got {ignore_result!r:.60}")


def clean_headers(headers: Any, known: Container[str], limits: Limits) -> dict:
    """The headers Celery may see: Celery's protocol-2 fields (typed), choreo's, the broker's."""
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise Malformed(f"headers must be a table, got {type(headers).__name__}")
    task, task_id = _task_and_id(headers, known)
    _check_celery_options(headers)
    ignore_result = headers.get("ignore_result")
    out = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": _optional_text("root_id", headers.get("root_id"), MAX_ID),
        "parent_id": _optional_text("parent_id", headers.get("parent_id"), MAX_ID),
        "group": _optional_text("group", headers.get("group"), MAX_ID),
        "shadow": _optional_text("shadow", headers.get("shadow"), MAX_ID),
        "origin": _optional_text("origin", headers.get("origin")),
        "argsrepr": _optional_text("argsrepr", headers.get("argsrepr")),
        "kwargsrepr": _optional_text("kwargsrepr", headers.get("kwargsrepr")),
        "retries": _nonneg_int("retries", headers.get("retries")),
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "ignore_result": bool(ignore_result),
    }
    if "choreo_attempt" in headers:
        out["choreo_attempt"] = _nonneg_int(
            "choreo_attempt", headers["choreo_attempt"], limits.max_attempts
        )
    for name in ("choreo_last_error", "choreo_order_id", "choreo_correlation_id"):
        if name in headers:
            out[name] = _optional_text(name, headers[name])
    # The broker's own (x-death from the retry ladder, x-delivery-count on redelivery) and
    # choreo's x-choreo-* notes: read by operators, never by Celery.
    out.update((k, v) for k, v in headers.items() if isinstance(k, str) and k.startswith("x-"))
    return out


def check_body(decoded: Any) -> None:
    """A protocol-2 body: [[envelope], {}, {embed options, all null}]."""
    if not isinstance(decoded, list):
        raise Malformed(f"body must be a JSON array [args, kwargs, options], got {_kind(decoded)}")
    if len(decoded) != 3:
        raise Malformed(
            f"body must be a JSON array of 3 elements [args, kwargs, options], got {len(decoded)}"
        )
    args, kwargs, embed = decoded
    if not isinstance(args, list):
        raise Malformed(f"body[0] (args) must be an array, got {_kind(args)}")
    if not isinstance(kwargs, dict):
        raise Malformed(f"body[1] (kwargs) must be an object, got {_kind(kwargs)}")
    if not isinstance(embed, dict):
        raise Malformed(f"body[2] (options) must be an object, got {_kind(embed)}")
    if len(args) != 1 or kwargs:
        raise Malformed(
            "expected exactly one positional argument, the envelope, and no keyword arguments"
        )
    if not isinstance(args[0], dict):
        raise Malformed(f"envelope must be a JSON object, got {_kind(args[0])}")
    unknown = sorted(str(k) for k in embed if k not in EMBED_KEYS)
    if unknown:
        raise Malformed(f"body[2] (options) has unknown keys {unknown[:5]}")
    set_ = sorted(k for k, v in embed.items() if v not in (None, [], {}))
    if set_:
        raise Malformed(
            f"body[2] (options) {set_} must be null: choreo messages carry no callbacks"
        )


def check(
    body: Any,
    headers: Any,
    content_type: Any,
    content_encoding: Any,
    decode: Callable[[], Any],
    known: Container[str],
    limits: Limits,
) -> dict:
    """Validate one delivery; return the headers to hand Celery, or raise Malformed(reason).

    `decode` is the message's own (kombu caches what it decodes, so Celery reads it for free).
    """
    size = len(body) if isinstance(body, (bytes, bytearray, str)) else 0
    if isinstance(body, str) and size * 4 > limits.max_bytes:  # py-amqp decoded it: count the bytes
        size = len(body.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise Malformed(
            f"message body is {size} bytes, over the limit of {limits.max_bytes} bytes "
            f"(max_message_bytes)"
        )
    clean = clean_headers(headers, known, limits)
    if size == 0:
        raise Malformed("body is empty")
    if content_type != "application/json":
        raise Malformed(f"content_type must be application/json, got {content_type!r:.60}")
    if content_encoding not in (None, "", "utf-8", "utf8", "UTF-8"):
        raise Malformed(f"content_encoding must be utf-8, got {content_encoding!r:.60}")
    try:
        decoded = decode()
    except Exception as exc:  # kombu raises DecodeError, or whatever its JSON hooks raised
        raise Malformed(f"body is not valid JSON: {str(exc)[:200]}") from None
    check_body(decoded)
    return clean


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)
