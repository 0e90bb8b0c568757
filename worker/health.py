"""HTTP endpoints: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (ready to serve)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from worker.metrics import Metrics


async def start_site(runner: web.AppRunner, host: str, port: int) -> int:
    """Serve `runner` on host:port; returns the bound port (the real one when 0 was asked for)."""
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    return server.sockets[0].getsockname()[1] if server else port


class HealthServer:
    """Serves on the event loop; `is_ready` is asked on every `/readyz` request."""

    def __init__(self, metrics: Metrics, is_ready: Callable[[], bool]) -> None:
        self._is_ready = is_ready
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        self.port = await start_site(self._runner, host, port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self._is_ready()
        return web.json_response(
            {"status": "ready" if ready else "not ready"}, status=200 if ready else 503
        )
