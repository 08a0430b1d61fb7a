"""Structured JSON logs that carry the saga's correlation id, event id, trace and span ids.

Every line has `service_name`, `trace_id` and `span_id` (null outside a message's handling);
the line that settles a message has its `duration_ms` (received to settled)."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

# The default is shared by every context that never bound a field: read-only, so none can change
# it for the others (`bound` sets a new dict, never updates the current one).
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "choreo_log_context", default=MappingProxyType({})
)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


@contextmanager
def bound(**fields):
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self.service_name = service.split(":")[-1]  # "worker:payment" -> "payment"

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "service_name": self.service_name,
            "logger": record.name,
            "msg": record.getMessage(),
            "trace_id": None,
            "span_id": None,
            **_context.get(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(service: str, level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(service)
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "amqp", "kombu", "pika"):
        logging.getLogger(noisy).setLevel("WARNING")
    # Celery's per-task "received" / "succeeded in ..." lines repeat, with the full arguments,
    # what the adapter's own "processed" line says with the correlation ids; they cost about
    # as much as a handler's database work. At DEBUG they come back.
    celery_level = "DEBUG" if root.level <= logging.DEBUG else "WARNING"
    for per_task in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(per_task).setLevel(celery_level)
