"""The HTTP server both ports run on (`worker/http/health.py`, `worker/http/api.py`): aiohttp,
hardened against slow and hostile clients (issue 22).

- A connection is closed when it has sent no complete request line and headers within
  `keepalive_timeout_s`: an idle keep-alive connection and a new one trickling its headers alike
  (aiohttp's default kept both for an hour). The body is timed by the handler that reads it.
- At most `max_connections` connections at once; one more is answered 503 and closed at once,
  nothing of it read (each open connection holds buffers: 400 held +80 MiB).
- Requests aiohttp cannot parse are answered by `error_response(status)` (the API: Google's
  error shape) and the connection closed; nothing of them is logged.
- aiohttp's own loggers never write what a request carried: their records keep only where they
  were logged and the exception's class (a malformed request line carries `?key=`, a bad header
  line the API key, a bad chunk size the comment's text).
- No version banner: the `Server` header is `moderation-worker`, on every answer.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

SERVER_NAME = "moderation-worker"
AIOHTTP_LOGGERS = (
    "aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server", "aiohttp.web",
    "aiohttp.websocket",
)  # fmt: skip

ErrorResponse = Callable[[int], web.Response]


@dataclass(frozen=True)
class HttpLimits:
    keepalive_timeout_s: float = 75.0
    """Longest a connection may go without a complete request line and headers: idle between
    requests, or a new request trickling in."""
    max_connections: int = 512
    """Open connections at once; beyond: 503 and closed."""
    lingering_s: float = 2.0
    """After an answer sent before the body was read: how long the rest is read and dropped
    (so that the client sees the answer) before the connection is closed."""
    max_line_size: int = 8190
    """Longest request line, in bytes (aiohttp's default); longer: 400."""
    max_field_size: int = 8190
    """Longest header line, in bytes (aiohttp's default); longer: 400."""
    max_headers: int = 64
    """Most header lines in a request; more: 400."""


def plain_error(status: int) -> web.Response:
    """`500 Internal Server Error` as text: the answer of the metrics and health port."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return web.Response(status=status, text=f"{status} {phrase}\n")


class _Withheld(logging.Filter):
    """Rewrites every record of an aiohttp logger to where it was logged and the exception's
    class: its message, arguments and traceback may quote the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        kind = f" ({type(exc).__name__})" if exc is not None else ""
        record.msg = "aiohttp event at %s:%d%s; details withheld: they may quote the request"
        record.args = (record.module, record.lineno, kind)
        record.exc_info = record.exc_text = record.stack_info = None
        return True


_WITHHELD = _Withheld()


def withhold_aiohttp_logs() -> None:
    """Put the filter on each of aiohttp's loggers (idempotent)."""
    for name in AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _WITHHELD not in logger.filters:
            logger.addFilter(_WITHHELD)


class _Handler(web.RequestHandler):
    """aiohttp's connection handler, with its own answer to requests it cannot parse (and to
    a handler that failed outside our own error handling): `error_response(status)`, the
    connection closed, one DEBUG line with the exception's class and nothing of the request."""

    def __init__(self, manager: web.Server, *, error_response: ErrorResponse, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._error_response = error_response

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc else "-"
        if status >= 500 and exc is not None:  # a handler failed: where, not what it held
            frame = traceback.extract_tb(exc.__traceback__)[-1:] or [None]
            where = f"{frame[0].filename}:{frame[0].lineno}" if frame[0] else "?"
            log.error("request failed: %d (%s at %s)", status, kind, where)
        else:
            log.debug("request not served: %d (%s)", status, kind)
        if request.writer.output_size > 0:  # an answer is under way: the connection is broken
            raise ConnectionError("the answer was already being sent")
        response = self._error_response(status)
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """A connection over the cap: one 503 and closed, nothing read."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._answer)
        transport.close()


async def _no_version_banner(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


def _raw_answer(response: web.Response) -> bytes:
    body = response.body if isinstance(response.body, bytes) else b""
    status = HTTPStatus(response.status)
    return (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nServer: {SERVER_NAME}\r\n"
        f"Content-Type: {response.content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


class HttpServer:
    """`app` served on host:port within `limits`. `on_refused` is called for each connection
    refused over the cap."""

    def __init__(
        self,
        app: web.Application,
        limits: HttpLimits,
        error_response: ErrorResponse = plain_error,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        withhold_aiohttp_logs()
        app.on_response_prepare.append(_no_version_banner)
        self._limits = limits
        self._error_response = error_response
        self._on_refused = on_refused
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._listener: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (the real one when 0 was asked for)."""
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        limits = self._limits
        options: dict[str, Any] = {
            "loop": loop,
            "keepalive_timeout": limits.keepalive_timeout_s,
            "lingering_time": limits.lingering_s,
            "max_line_size": limits.max_line_size,
            "max_field_size": limits.max_field_size,
            "max_headers": limits.max_headers,
            "access_log": None,
        }
        refusal = _raw_answer(self._error_response(503))

        def connection() -> asyncio.Protocol:
            if len(server.connections) >= limits.max_connections:
                if self._on_refused is not None:
                    self._on_refused()
                return _Refused(refusal)
            return _Handler(server, error_response=self._error_response, **options)

        self._listener = await loop.create_server(connection, host, port, backlog=128)
        self.port = self._listener.sockets[0].getsockname()[1]
        return self.port

    def open_connections(self) -> int:
        server = self._runner.server
        return len(server.connections) if server is not None else 0

    async def stop(self) -> None:
        """Stop listening, let requests under way finish, close every connection."""
        if self._listener is not None:
            self._listener.close()
        await self._runner.cleanup()
