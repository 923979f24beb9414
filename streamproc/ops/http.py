"""HTTP endpoints on one port: /metrics (Prometheus text), /healthz (alive), /readyz (ready)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamproc.ops.metrics import Metrics

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, dict[str, bool]]]


def build_http_app(metrics: Metrics, ready_check: ReadyCheck) -> web.Application:
    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        ok, checks = ready_check()
        metrics.ready.set(1 if ok else 0)
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class HttpServer:
    """Runs the endpoints inside the worker's event loop."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self.host, self.port = host, port

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()


class HttpService(Service):
    """/metrics, /healthz, /readyz on STREAMPROC_HTTP_PORT, living as long as the worker."""

    def __init__(self, server: HttpServer, **kwargs: Any) -> None:
        self.server = server
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.server.start()
        log.info("HTTP endpoints on port %d: /metrics /healthz /readyz", self.server.port)

    async def on_stop(self) -> None:
        await self.server.stop()


def http_service(ready_check: ReadyCheck, metrics: Metrics, port: int) -> HttpService:
    web_app = build_http_app(metrics, ready_check)
    return HttpService(HttpServer(web_app, "0.0.0.0", port))
