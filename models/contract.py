"""The published wire contract: JSON Schema files generated from the pydantic models.

`python -m models.contract` writes them under schemas/; `--check` exits 1 when the files
differ from the models (a unit test runs the same comparison). A client in another language
validates what it sends against these files and needs nothing else from this repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from models.envelope import EMBED_KEYS, PAYLOADS, SCHEMA_VERSION, Envelope

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def urn(name: str) -> str:
    return f"urn:choreo:schema:{name}"


def envelope_schema() -> dict[str, Any]:
    """The envelope, with `payload` checked against the schema of its `type`; one self-contained
    file."""
    models: list[type[BaseModel]] = [Envelope, *dict.fromkeys(PAYLOADS.values())]
    refs, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/$defs/{model}"
    )
    defs = top["$defs"]
    schema = dict(defs.pop("Envelope"))
    schema["properties"]["type"] = {
        "enum": sorted(PAYLOADS),
        "title": "Type",
        "description": "The message type; also the routing key and the `task` header.",
    }
    schema["allOf"] = [
        {
            "if": {"properties": {"type": {"const": type_}}, "required": ["type"]},
            "then": {"properties": {"payload": {"$ref": f"#/$defs/{model.__name__}"}}},
        }
        for type_, model in sorted(PAYLOADS.items())
    ]
    return {
        "$schema": DRAFT,
        "$id": urn("envelope"),
        **schema,
        "description": f"Every choreo message's envelope (schema_version {SCHEMA_VERSION}). "
        "The event id is the idempotency key: a redelivery with the same id changes nothing.",
        "$defs": defs,
    }


def payload_schema(type_: str) -> dict[str, Any]:
    schema = PAYLOADS[type_].model_json_schema(ref_template="#/$defs/{model}")
    return {"$schema": DRAFT, "$id": urn(f"payload:{type_}"), **schema}


def body_schema() -> dict[str, Any]:
    """The AMQP body: Celery's protocol-2 frame around one envelope."""
    return {
        "$schema": DRAFT,
        "$id": urn("body"),
        "title": "Message body",
        "description": "The body of every message: JSON, content_type application/json, "
        'content_encoding utf-8, uncompressed: [[ENVELOPE], {}, {"callbacks": null, '
        '"errbacks": null, "chain": null, "chord": null}].',
        "type": "array",
        "minItems": 3,
        "maxItems": 3,
        "prefixItems": [
            {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {"$ref": urn("envelope")},
                "description": "args: exactly one, the envelope",
            },
            {"type": "object", "maxProperties": 0, "description": "kwargs: always empty"},
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {k: {"type": "null"} for k in sorted(EMBED_KEYS)},
                "description": "options: all null (a message that asks for callbacks is refused)",
            },
        ],
    }


def headers_schema() -> dict[str, Any]:
    """The AMQP headers table, written as JSON."""
    optional_text = {"type": ["string", "null"]}
    return {
        "$schema": DRAFT,
        "$id": urn("headers"),
        "title": "Message headers (AMQP table)",
        "description": "Required: task (the message type) and id (the envelope's event_id). "
        "Other Celery protocol-2 headers may be sent with these values; headers not listed are "
        "ignored.",
        "type": "object",
        "required": ["task", "id"],
        "properties": {
            "task": {
                "enum": sorted(PAYLOADS),
                "description": "the message type, as in the envelope",
            },
            "id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "the envelope's event_id",
            },
            "lang": {"const": "py"},
            "root_id": optional_text,
            "parent_id": optional_text,
            "group": optional_text,
            "origin": optional_text,
            "argsrepr": optional_text,
            "kwargsrepr": optional_text,
            "retries": {"type": "integer", "minimum": 0},
            "eta": {"type": "null", "description": "never set: retries wait in the broker"},
            "expires": {
                "type": "null",
                "description": "never set: a message is processed or dead-lettered",
            },
            "timelimit": {"type": "array", "items": {"type": "null"}, "minItems": 2, "maxItems": 2},
        },
    }


def documents() -> dict[str, dict[str, Any]]:
    """Relative path under schemas/ -> JSON Schema document."""
    docs = {
        "envelope.json": envelope_schema(),
        "body.json": body_schema(),
        "headers.json": headers_schema(),
    }
    docs.update({f"payloads/{t}.json": payload_schema(t) for t in sorted(PAYLOADS)})
    return docs


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def stale(root: Path = SCHEMA_DIR) -> list[str]:
    """Files under `root` that differ from the models, are missing, or describe nothing any more."""
    docs = documents()
    out = [
        p
        for p, d in docs.items()
        if not (root / p).is_file() or (root / p).read_text() != render(d)
    ]
    out += [
        str(f.relative_to(root))
        for f in root.rglob("*.json")
        if str(f.relative_to(root)) not in docs
    ]
    return sorted(out)


def write(root: Path = SCHEMA_DIR) -> list[str]:
    for f in root.rglob("*.json"):
        f.unlink()
    for path, doc in documents().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(render(doc))
    return sorted(documents())


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        bad = stale()
        for path in bad:
            print(f"schemas/{path} is out of date: run python -m models.contract", file=sys.stderr)
        return 1 if bad else 0
    if argv[1:]:
        print("usage: python -m models.contract [--check]", file=sys.stderr)
        return 2
    for path in write():
        print(f"schemas/{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
