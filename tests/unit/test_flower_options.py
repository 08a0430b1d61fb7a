"""Flower's command line: the order's column in the tasks list, and the Broker tab's management
API passed only when one answers."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from choreo.ops import flower
from config.settings import Settings


def test_the_tasks_list_shows_the_order_and_each_outcome():
    s = Settings(flower_port=5599)
    args = flower.argv(s, None)
    assert "--port=5599" in args and "--address=127.0.0.1" in args
    columns = next(a for a in args if a.startswith("--tasks_columns=")).split("=", 1)[1]
    # args is `order=… correlation=… event=…` (choreo.messaging.wire.flower_argsrepr).
    assert columns.split(",")[:4] == ["name", "args", "state", "result"]
    assert not any(a.startswith("--broker_api") for a in args)


def test_the_broker_api_is_passed_without_credentials():
    args = flower.argv(Settings(), "http://rabbitmq:15672/api/")
    assert "--broker_api=http://rabbitmq:15672/api/" in args


def test_the_management_api_is_the_admin_api_else_the_first_nodes_15672():
    assert (
        flower.management_api(Settings(broker_admin_api="http://rabbitmq:15672/"))
        == "http://rabbitmq:15672/api/"
    )
    s = Settings(broker_url="amqp://u:p@node-a:5672/v;amqp://u:p@node-b:5672/v")
    assert flower.management_api(s) == "http://node-a:15672/api/"


class _Unauthorized(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_api_that_answers_at_all_is_passed_and_a_closed_port_is_not():
    server = HTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = f"http://127.0.0.1:{server.server_port}/api/"
        assert flower.answering(api)
        assert flower.broker_api(Settings(broker_admin_api=api.removesuffix("/api/"))) == api
    finally:
        server.shutdown()
        server.server_close()
    assert not flower.answering("http://127.0.0.1:9/api/", timeout=1)
    assert flower.broker_api(Settings(broker_admin_api="http://127.0.0.1:9")) is None
