"""HTTP endpoints: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (ready to serve).

They carry no comment text and no secret, and bind every interface by default
(`MODERATION_METRICS_HOST`): the kubelet's probes and Prometheus reach a pod on its own address.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from worker.http.server import HttpLimits, HttpServer
from worker.metrics import Metrics

# probes and scrapes need few connections, and none held long
HEALTH_LIMITS = HttpLimits(keepalive_timeout_s=75.0, max_connections=64)


class HealthServer:
    """Serves on the event loop; `is_ready` is asked on every `/readyz` request."""

    def __init__(self, metrics: Metrics, is_ready: Callable[[], bool]) -> None:
        self._is_ready = is_ready
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._server = HttpServer(app, HEALTH_LIMITS)
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        self.port = await self._server.start(host, port)

    async def stop(self) -> None:
        await self._server.stop()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self._is_ready()
        return web.json_response(
            {"status": "ready" if ready else "not ready"}, status=200 if ready else 503
        )
