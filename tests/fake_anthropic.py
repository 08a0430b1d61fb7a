"""A local fake of the Anthropic Messages API for the agent's tests: the real SDK talks to it
over loopback (its base URL setting), and it answers with scripted model turns.

Each script step is a list of content blocks for the next assistant turn (tool_use blocks make
its stop_reason "tool_use"), or an (HTTP status, error type) pair to answer with an error. The
server records every request body, so tests see what the SDK sent (tools, tool results).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def tool_use(name: str, arguments: dict, id_: str | None = None) -> dict:
    return {
        "type": "tool_use",
        "id": id_ or f"toolu_{name}_{abs(hash(json.dumps(arguments))) % 10**8}",
        "name": name,
        "input": arguments,
    }


def _key(headers) -> str | None:
    """The API key the SDK sent (x-api-key, or a bearer token: this SDK version sends the
    latter)."""
    auth = headers.get("authorization") or ""
    return headers.get("x-api-key") or (
        auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
    )


class FakeMessagesAPI:
    def __init__(self, script: list[Any], repeat_last: bool = False) -> None:
        self.script = list(script)
        self.repeat_last = repeat_last
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(
                    self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}"
                )
                fake.requests.append(
                    {"path": self.path, "body": body, "api_key": _key(self.headers)}
                )
                if fake.script:
                    step = (
                        fake.script[0]
                        if (fake.repeat_last and len(fake.script) == 1)
                        else fake.script.pop(0)
                    )
                else:
                    step = [text("(the fake has no more turns)")]
                if isinstance(step, tuple):
                    status, kind = step
                    payload = {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}
                    self._send(
                        status, payload, {"retry-after": "0"} if status in (429, 529) else {}
                    )
                    return
                stop = "tool_use" if any(b["type"] == "tool_use" for b in step) else "end_turn"
                self._send(
                    200,
                    {
                        "id": f"msg_{len(fake.requests)}",
                        "type": "message",
                        "role": "assistant",
                        "model": body.get("model"),
                        "content": step,
                        "stop_reason": stop,
                        "stop_sequence": None,
                        "usage": {"input_tokens": 11, "output_tokens": 7},
                    },
                )

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeMessagesAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def tool_results(self, n: int) -> list[dict]:
        """The tool_result blocks of request n (0-based)."""
        last = self.requests[n]["body"]["messages"][-1]
        return (
            [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
            if isinstance(last["content"], list)
            else []
        )
