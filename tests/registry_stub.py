"""A stand-in Confluent Schema Registry on loopback: register a version, fetch by id, list
subjects; and, when told, hang (accept the request and never answer), as a registry
behind a stuck load balancer does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RegistryState:
    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.calls: list[str] = []
        self.hang = threading.Event()  # set: every request hangs until cleared
        self.url = ""


def _handler(state: RegistryState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _wait_while_hanging(self) -> None:
            while state.hang.is_set():
                time.sleep(0.05)

        def do_POST(self) -> None:
            state.calls.append(f"POST {self.path}")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._wait_while_hanging()
            if "/subjects/" in self.path and self.path.split("?")[0].endswith("/versions"):
                text = body["schema"]
                known = [i for i, t in state.schemas.items() if t == text]
                sid = known[0] if known else len(state.schemas) + 1
                state.schemas[sid] = text
                self._reply(200, {"id": sid})
            else:
                self._reply(404, {"error_code": 404, "message": "not found"})

        def do_GET(self) -> None:
            state.calls.append(f"GET {self.path}")
            self._wait_while_hanging()
            path = self.path.split("?")[0]
            if path.startswith("/schemas/ids/"):
                sid = int(path.rsplit("/", 1)[-1])
                if sid in state.schemas:
                    self._reply(200, {"schema": state.schemas[sid]})
                    return
                self._reply(404, {"error_code": 40403, "message": "Schema not found"})
                return
            if path == "/subjects":
                self._reply(200, [])
                return
            self._reply(404, {"error_code": 404, "message": "not found"})

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def registry() -> Iterator[RegistryState]:
    state = RegistryState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        state.hang.clear()
        server.shutdown()
        server.server_close()
