"""The hardened aiohttp server both ports run on (worker/http/server.py), in process: the
keep-alive/header timeout, the connection cap, answers to unparsable requests, aiohttp's logs
withheld, no version banner (issue 22). The API on it: tests/reliability/test_http_hostile.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from worker.http.server import HttpLimits, HttpServer

CANARY = "CanaryText91c2"


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _fails(request: web.Request) -> web.Response:
    raise KeyError(request.query.get("q"))


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[HttpServer]:
    """The server on a free port (in the test's own event loop), stopped after."""
    app = web.Application()
    app.router.add_get("/ok", _ok)
    app.router.add_get("/fails", _fails)
    server = HttpServer(app, HttpLimits(keepalive_timeout_s=0.5, max_connections=2))
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


async def exchange(port: int, request: bytes, wait_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or `wait_s` passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        data += b"<still open>"
    writer.close()
    return data


async def test_idle_and_trickling_connections_are_closed() -> None:
    async with serving() as server:
        assert server.port
        started = time.monotonic()
        assert await exchange(server.port, b"") == b""  # nothing sent: closed, no answer
        assert await exchange(server.port, b"GET /ok HTTP/1.1\r\nHost: w\r\n") == b""
        assert time.monotonic() - started < 4  # 0.5 s each; aiohttp's default kept them an hour
        kept = await exchange(server.port, b"GET /ok HTTP/1.1\r\nHost: w\r\n\r\n")
        assert kept.startswith(b"HTTP/1.1 200") and kept.endswith(b"ok")  # then closed when idle


async def test_a_connection_over_the_cap_gets_503_and_the_server_serves_on() -> None:
    async with serving() as server:
        assert server.port
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        await asyncio.sleep(0)  # let the server take them (the count is the server's own)
        while server.open_connections() < 2:
            await asyncio.sleep(0.01)
        refused = await exchange(server.port, b"GET /ok HTTP/1.1\r\nHost: w\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 503") and b"Server: moderation-worker\r\n" in refused
        for _, writer in held:
            writer.close()
        while server.open_connections() >= 2:
            await asyncio.sleep(0.01)
        served = await exchange(
            server.port, b"GET /ok HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n"
        )
        assert served.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "request_bytes",
    [
        f"GET /ok?key={CANARY} HTTP/1.1\r\nHost: w\r\nX-Goog-Api-Key: {CANARY}\x01\r\n\r\n",
        f"GAR<BAGE /ok?key={CANARY} HTTP/1.1\r\n\r\n",
        f"POST /ok HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n{CANARY}\r\n",
        f"GET /ok HTTP/1.1\r\nX-Goog-Api-Key {CANARY}\r\n\r\n",
    ],
)
async def test_unparsable_requests_get_400_and_reach_no_log(
    request_bytes: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving() as server:
        assert server.port
        with caplog.at_level(logging.DEBUG):
            answer = await exchange(server.port, request_bytes.encode())
        assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
        assert b"Server: moderation-worker\r\n" in answer and CANARY.encode() not in answer
        assert caplog.records, "the server logs at DEBUG that it did not serve the request"
        for record in caplog.records:
            assert CANARY not in record.getMessage() and not record.exc_info, record.name


async def test_a_failing_handler_logs_its_class_and_place_not_its_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving() as server:
        assert server.port
        with caplog.at_level(logging.DEBUG):
            answer = await exchange(
                server.port, f"GET /fails?q={CANARY} HTTP/1.1\r\nHost: w\r\n\r\n".encode()
            )
        assert answer.startswith(b"HTTP/1.1 500") and b"Server: moderation-worker\r\n" in answer
        [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "KeyError at " in error.getMessage() and "test_http_server.py" in error.getMessage()
        assert all(CANARY not in r.getMessage() and not r.exc_info for r in caplog.records)


async def test_aiohttps_own_loggers_keep_no_detail() -> None:
    """Whatever aiohttp itself logs: where it was logged and the exception's class only."""
    async with serving():  # it puts the filter on aiohttp's loggers
        records: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        handler = Keep()
        logger = logging.getLogger("aiohttp.server")
        logger.addHandler(handler)
        try:
            try:
                raise ValueError(CANARY)
            except ValueError:
                logger.exception("Error handling request %s", f"GET /?key={CANARY}")
        finally:
            logger.removeHandler(handler)
        [record] = records
        assert CANARY not in record.getMessage() and record.exc_info is None
        assert "(ValueError)" in record.getMessage()
