"""The real Confluent registry client against a stand-in registry on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from streamproc.contracts.codec import AvroCodec, ConfluentRegistry
from streamproc.contracts.records import from_json, normalize
from streamproc.contracts.schemas import SchemaSet
from tests.conftest import NOW_MS, SIG_TOPIC


class _Registry(BaseHTTPRequestHandler):
    """Just enough of the Schema Registry REST API: register a version, fetch by id."""

    schemas: ClassVar[dict[int, str]] = {}
    calls: ClassVar[list[str]] = []

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.calls.append(f"POST {self.path}")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "/subjects/" in self.path and self.path.split("?")[0].endswith("/versions"):
            text = body["schema"]
            sid = next((i for i, t in self.schemas.items() if t == text), len(self.schemas) + 1)
            self.schemas[sid] = text
            self._reply(200, {"id": sid})
        else:
            self._reply(404, {"error_code": 404, "message": "not found"})

    def do_GET(self) -> None:
        self.calls.append(f"GET {self.path}")
        path = self.path.split("?")[0]
        if path.startswith("/schemas/ids/"):
            sid = int(path.rsplit("/", 1)[-1])
            if sid in self.schemas:
                self._reply(200, {"schema": self.schemas[sid]})
                return
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})
            return
        self._reply(404, {"error_code": 404, "message": "not found"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def registry_url() -> Iterator[str]:
    _Registry.schemas, _Registry.calls = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_confluent_registry_round_trip(registry_url: str, schemas: SchemaSet) -> None:
    signal = from_json(
        schemas.for_topic(SIG_TOPIC),
        {
            "event_id": "s1",
            "account_id": "a1",
            "occurred_at": NOW_MS - 1000,
            "device_id": "d1",
            "signal_type": "LOGIN",
        },
        now_ms=NOW_MS,
    )
    data = AvroCodec(schemas, ConfluentRegistry(registry_url)).encode(SIG_TOPIC, signal)
    assert data[0] == 0 and data[1:5] == (1).to_bytes(4, "big")
    assert any(c.startswith(f"POST /subjects/{SIG_TOPIC}-value/versions") for c in _Registry.calls)
    # A fresh decoder (another process) resolves the id through the registry.
    fresh = AvroCodec(SchemaSet(), ConfluentRegistry(registry_url))
    decoded = normalize(schemas.for_topic(SIG_TOPIC), fresh.decode(SIG_TOPIC, data))
    assert decoded == signal
    # The registered text keeps the PII attributes: the contract travels with the data.
    assert '"pii":true' in _Registry.schemas[1]
