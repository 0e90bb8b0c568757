"""The Perspective-compatible HTTP API: `POST /v1alpha1/comments:analyze` and its discovery
document, on its own port (`MODERATION_HTTP_API_PORT`, off by default).

Each request's texts (the comment, and with `spanAnnotations` each sentence) are tokenized on
the worker's tokenizer thread and put into the same `BatchQueue` as Kafka records, as `Reply`
entries: concurrent requests and Kafka records share forward passes, and the inference loop
answers each text as soon as its batch is scored. At most `MODERATION_HTTP_API_MAX_PENDING`
texts wait at once; beyond that a request is refused at once with 429 RESOURCE_EXHAUSTED
(nothing grows without bound). While the worker is not serving (starting, draining) the answer
is 503 UNAVAILABLE. Nothing of a request's text is logged or kept: no access log (the query
carries the API key), errors name fields, never values.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import orjson
from aiohttp import web

from worker.batching import BatchQueue, Tokenized
from worker.config import Settings
from worker.health import start_site
from worker.lifecycle import Feature
from worker.metrics import Metrics
from worker.model import ServedModel
from worker.perspective import (
    ANALYZE_PATH,
    API_VERSION,
    Analysis,
    ApiError,
    build_response,
    discovery_document,
    invalid,
    parse_request,
    sentence_spans,
    utf16_offsets,
)
from worker.records import Reply

log = logging.getLogger(__name__)

JSON = "application/json"
BODY_OVERHEAD = 64 * 1024  # room for the JSON around the text in a request body


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON)


class PerspectiveApi(Feature):
    """The HTTP front door; `serving()` is asked on every request (False: 503)."""

    name = "http_api"

    def __init__(
        self,
        settings: Settings,
        model: ServedModel,
        queue: BatchQueue,
        tokenize_executor: Executor,
        metrics: Metrics,
        serving: Callable[[], bool],
    ) -> None:
        self._model = model
        self._queue = queue
        self._tokenize_executor = tokenize_executor
        self._metrics = metrics
        self._serving = serving
        self._host, self._port = settings.http_api_host, settings.http_api_port or 0
        self._key = settings.http_api_key.get_secret_value() if settings.http_api_key else None
        self._max_text_bytes = settings.http_api_max_text_bytes
        self._max_pending = settings.http_api_max_pending
        self._pending: set[Reply] = set()
        self._closing = False
        # a body is read whole; above this size it is refused (Google's shape) before parsing
        self._max_body = 4 * settings.http_api_max_text_bytes + BODY_OVERHEAD
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post(ANALYZE_PATH, self._timed("analyze", self._analyze))
        app.router.add_post(
            f"/{API_VERSION}/comments:suggestscore",
            self._timed("suggestscore", self._unimplemented),
        )
        app.router.add_get("/$discovery/rest", self._timed("discovery", self._discovery))
        self._runner = web.AppRunner(app, access_log=None)
        self.port: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.port = await start_site(self._runner, self._host, self._port)
        log.info("Perspective-compatible HTTP API on port %s", self.port)

    def close(self) -> None:
        """No new requests (503); those queued are still answered by the draining loop."""
        self._closing = True

    async def stop(self) -> None:
        """Answer what the backend will no longer score with 503, then close the server."""
        self._closing = True
        for reply in list(self._pending):
            reply.resolve(ApiError(503, "UNAVAILABLE", "The server is shutting down."))
        await self._runner.cleanup()

    # --- handlers --------------------------------------------------------------------------

    def _timed(
        self, method: str, handler: Callable[[web.Request], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def timed(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except ApiError as error:
                response = _json(error.body(), error.code)
                log.debug("%s: %d %s %s", method, error.code, error.status, error.error_type)
            except Exception:
                log.exception("%s: internal error", method)
                self._metrics.errors.labels("http").inc()
                error = ApiError(500, "INTERNAL", "Internal error.")
                response = _json(error.body(), 500)
            self._metrics.http_requests.labels(method, str(response.status)).inc()
            self._metrics.http_latency.labels(method).observe(time.perf_counter() - started)
            return response

        return timed

    async def _analyze(self, request: web.Request) -> web.Response:
        self._check_key(request)
        if not self._serving() or self._closing:
            raise ApiError(503, "UNAVAILABLE", "The service is not ready; retry later.")
        if request.content_type != JSON:
            raise invalid(
                "Invalid JSON payload received. Content-Type must be application/json, "
                f"not {request.content_type or 'missing'}."
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise invalid(
                f"Request payload size exceeds the limit: {self._max_body} bytes.",
                "COMMENT_TOO_LONG",
            ) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise invalid("Invalid JSON payload received.") from None
        analysis = parse_request(body, self._model.contract, self._max_text_bytes)
        return _json(await self._score(analysis))

    async def _score(self, analysis: Analysis) -> dict[str, Any]:
        """The summary text and (when asked) each sentence, through the shared queue."""
        text = analysis.text
        sentences = sentence_spans(text) if analysis.spans else []
        span_texts = [text[b:e] for b, e in sentences] if len(sentences) > 1 else []
        texts = [text, *span_texts]
        if self._pending and len(self._pending) + len(texts) > self._max_pending:
            raise ApiError(
                429, "RESOURCE_EXHAUSTED",
                "Too many comments are waiting to be scored; retry later.",
            )  # fmt: skip
        replies = [Reply() for _ in texts]
        self._pending.update(replies)
        try:
            ids = await self._tokenize(texts)
            if self._closing:
                raise ApiError(503, "UNAVAILABLE", "The server is shutting down.")
            self._queue.put(
                [Tokenized(reply, seq) for reply, seq in zip(replies, ids, strict=True)]
            )
            self._metrics.http_pending.set(len(self._pending))
            outcomes = await asyncio.gather(
                *(reply.future for reply in replies), return_exceptions=True
            )
        except RuntimeError:  # the queue closed under us: the worker is stopping
            raise ApiError(503, "UNAVAILABLE", "The server is shutting down.") from None
        finally:
            self._pending.difference_update(replies)
            self._metrics.http_pending.set(len(self._pending))
        for outcome in outcomes:
            if isinstance(outcome, ApiError):
                raise outcome
            if isinstance(outcome, BaseException):  # the backend failed on this text alone
                raise ApiError(500, "INTERNAL", "The model failed on this comment.")
        rows = outcomes
        spans = None
        if analysis.spans:
            if span_texts:
                offsets = utf16_offsets(text, [o for span in sentences for o in span])
                spans = [
                    (offsets[2 * i], offsets[2 * i + 1], row) for i, row in enumerate(rows[1:])
                ]
            else:  # one sentence (or none): one span, the summary's score
                begin, end = sentences[0] if sentences else (0, len(text))
                b, e = utf16_offsets(text, [begin, end])
                spans = [(b, e, rows[0])]
        return build_response(analysis, self._model.contract.labels, rows[0], spans)

    async def _tokenize(self, texts: list[str]) -> list[list[int]]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._tokenize_executor, self._model.tokenizer.encode, texts
            )
        except Exception as exc:
            raise invalid(f"The comment could not be tokenized ({type(exc).__name__}).") from None

    async def _unimplemented(self, request: web.Request) -> web.Response:
        self._check_key(request)
        raise ApiError(501, "UNIMPLEMENTED", "comments:suggestscore is not served here.")

    async def _discovery(self, request: web.Request) -> web.Response:
        self._check_key(request)
        version = request.query.get("version", API_VERSION)
        if version != API_VERSION:
            raise ApiError(
                404, "NOT_FOUND", f"Discovery document not found for API version {version}."
            )
        root = f"{request.scheme}://{request.host}/"
        return _json(discovery_document(root, sorted(self._model.contract.api_attributes)))

    def _check_key(self, request: web.Request) -> None:
        """With a configured key, Google's answers: none given 403, a wrong one 400."""
        if self._key is None:
            return
        given = request.query.get("key") or request.headers.get("X-Goog-Api-Key")
        if not given:
            raise ApiError(
                403, "PERMISSION_DENIED",
                "The request is missing a valid API key.",
            )  # fmt: skip
        if not hmac.compare_digest(given.encode(), self._key.encode()):
            raise ApiError(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."
            )
