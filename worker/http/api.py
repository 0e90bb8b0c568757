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

Nothing that grows with the request runs on the event loop: the sentences of `spanAnnotations`
are split (in linear time) on the tokenizer thread, once the request was admitted. A body must
arrive whole within `MODERATION_HTTP_API_BODY_TIMEOUT_S` (else 408, connection closed); a client
that hangs up is counted (`moderation_http_client_disconnects_total`), not an error. The server
itself (timeouts, connection cap, logs, no version banner): `worker/http/server.py`.

Each comment's language is identified on the tokenizer thread with its tokenization (the
model's `LanguageDetector`; none when `MODERATION_LANGUAGE_DETECTION` is off); what a language
the model does not serve gets is the tenant's mode (`communityId`) in the policy in force
(`worker/http/perspective.py`, `judge_language`). Any path or method not served answers in
Google's error shape (404 NOT_FOUND, 405 UNIMPLEMENTED), as every other error.

`POST /v1alpha1/comments:suggestscore` takes a moderator's decision (`worker/http/suggest.py`)
and answers only once its `Feedback` record is stored (`worker/http/feedback_sink.py`: the
feedback topic with Kafka, `MODERATION_FEEDBACK_FILE` with HTTP only); not stored within
`MODERATION_FEEDBACK_TIMEOUT_S`: 503. HTTP only without a file: 501, saying what to set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import orjson
from aiohttp import web

from schemas import HTTP_DEFAULT_UNSUPPORTED_LANGUAGE, Feedback
from worker.backends.model import ServedModel
from worker.config import Settings
from worker.http.feedback_sink import FeedbackSink, FeedbackUnavailable
from worker.http.perspective import (
    ANALYZE_PATH,
    API_VERSION,
    MAX_TENANT_CHARS,
    TENANT_PREFIX,
    Analysis,
    ApiError,
    LanguageVerdict,
    build_response,
    discovery_document,
    invalid,
    judge_language,
    language_refusal,
    parse_request,
    split_sentences,
)
from worker.http.server import HttpLimits, HttpServer
from worker.http.suggest import Suggestion, comment_id, parse_suggestion, suggest_response
from worker.lifecycle import Feature
from worker.metrics import Metrics
from worker.pipeline.batching import BatchQueue, Tokenized
from worker.pipeline.language import Detection
from worker.pipeline.records import Reply
from worker.policy import PolicyHolder
from worker.quality.cache import ScoreCache
from worker.quality.tracker import QualityTracker

log = logging.getLogger(__name__)

JSON = "application/json"
BODY_OVERHEAD = 64 * 1024  # room for the JSON around the text in a request body


# Google's status names of the codes this server answers with
_STATUS = {
    400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
    431: "INVALID_ARGUMENT", 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}  # fmt: skip


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON)


def google_error(status: int) -> web.Response:
    """A request aiohttp could not parse (or a connection over the cap), in Google's shape."""
    name = _STATUS.get(status, "INVALID_ARGUMENT" if status < 500 else "INTERNAL")
    messages = {503: "Too many connections; retry later.", 500: "Internal error."}
    message = messages.get(status, "The request is not valid HTTP.")
    return _json(ApiError(status, name, message).body(), status)


def _shown(value: str) -> str:
    """A header value fit to quote in an answer: printable ASCII, short; else a description."""
    if value.isascii() and value.isprintable() and len(value) <= 100:
        return value
    return "an unreadable value"


def not_found(path: str) -> ApiError:
    """404 for a path this server does not serve; one that lacks the version prefix says so."""
    message = f"Not found: {_shown(path)}."
    if not path.startswith(f"/{API_VERSION}/") and path.endswith(
        ("comments:analyze", "comments:suggestscore")
    ):
        message += (
            f" This API's methods are under /{API_VERSION}: a Perspective endpoint (Coral's"
            f" 'endpoint' setting) ends in /{API_VERSION}, e.g. http://HOST:PORT/{API_VERSION}."
        )
    return ApiError(404, "NOT_FOUND", message)


def path_tenant(request: web.Request) -> str | None:
    """The tenant named by the endpoint's path (`/tenants/NAME/v1alpha1/...`), which wins over
    the body's `communityId`; None on the plain `/v1alpha1` paths."""
    tenant = request.match_info.get("tenant")
    if tenant is not None and len(tenant) > MAX_TENANT_CHARS:
        raise invalid(
            f"The tenant in the path is too long (at most {MAX_TENANT_CHARS} characters)."
        )
    return tenant


def suggestion_outcome(status: int) -> str:
    """`moderation_feedback_suggestions_total`'s `outcome` of a suggestscore answer: `stored`
    (200), `invalid` (4xx), `unconfigured` (501: HTTP only without a feedback file), or
    `unavailable` (any other 5xx: not stored)."""
    if status == 200:
        return "stored"
    if status == 501:
        return "unconfigured"
    return "invalid" if 400 <= status < 500 else "unavailable"


class ClientGone(Exception):
    """The client hung up before its answer: nothing to answer, nothing went wrong here."""


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
        policies: PolicyHolder | None = None,
        feedback: FeedbackSink | None = None,
        score_cache: ScoreCache | None = None,
        quality: QualityTracker | None = None,
    ) -> None:
        self._model = model
        # what analyze scored, by comment id (suggestscore's records carry it); None: not kept
        self._score_cache = score_cache
        # HTTP only: the tracker counts each stored decision here (with Kafka, its consumer)
        self._quality = quality
        # where suggestscore stores decisions (None: HTTP only without MODERATION_FEEDBACK_FILE)
        self._feedback = feedback
        self._feedback_started = False
        # the policy in force (reloads included); without one, the model's: the HTTP default mode
        self._policies = policies or PolicyHolder(model.contract)
        self._queue = queue
        self._tokenize_executor = tokenize_executor
        self._metrics = metrics
        self._serving = serving
        self._port = settings.http_api_port or 0
        self._key = settings.http_api_key.get_secret_value() if settings.http_api_key else None
        self._max_text_bytes = settings.http_api_max_text_bytes
        self._max_pending = settings.http_api_max_pending
        self._body_timeout = settings.http_api_body_timeout_s
        self._host = settings.http_api_bind_host
        self._pending: set[Reply] = set()
        self._closing = False
        # a body is read whole; above this size it is refused (Google's shape) before parsing
        self._max_body = 4 * settings.http_api_max_text_bytes + BODY_OVERHEAD
        app = web.Application(
            client_max_size=self._max_body, middlewares=[self._unrouted_in_googles_shape]
        )
        for prefix in ("", TENANT_PREFIX):  # the tenant from the path, else `communityId`
            app.router.add_post(prefix + ANALYZE_PATH, self._timed("analyze", self._analyze))
            app.router.add_post(
                f"{prefix}/{API_VERSION}/comments:suggestscore",
                self._timed("suggestscore", self._suggestscore),
            )
        app.router.add_get("/$discovery/rest", self._timed("discovery", self._discovery))
        limits = HttpLimits(
            keepalive_timeout_s=settings.http_api_keepalive_timeout_s,
            max_connections=settings.http_api_max_connections,
        )
        self._server = HttpServer(
            app, limits, google_error, on_refused=metrics.http_connections_refused.inc
        )
        metrics.http_connections.set_function(self._server.open_connections)
        self.port: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the settings' host and port (`Settings.http_api_bind_host`)."""
        if self._feedback is not None:
            await self._feedback.start()  # a file that cannot be opened: the worker does not start
            self._feedback_started = True
            log.info("comments:suggestscore records decisions to %s", self._feedback.destination)
        else:
            log.warning(
                "comments:suggestscore answers 501: HTTP only without MODERATION_FEEDBACK_FILE"
            )
        self.port = await self._server.start(self._host, self._port)
        log.info("Perspective-compatible HTTP API on port %s", self.port)
        if self._key is None:
            local = self._host.startswith("127.") or self._host == "::1"
            where = "this pod only" if local else "ANY client"
            log.warning(
                "HTTP API on %s:%s without an API key: open to %s", self._host, self.port, where
            )

    def close(self) -> None:
        """No new requests (503); those queued are still answered by the draining loop."""
        self._closing = True

    async def stop(self) -> None:
        """Answer what the backend will no longer score with 503, then close the server."""
        self._closing = True
        for reply in list(self._pending):
            reply.resolve(ApiError(503, "UNAVAILABLE", "The server is shutting down."))
        await self._server.stop()
        if self._feedback is not None and self._feedback_started:
            await self._feedback.stop()

    # --- handlers --------------------------------------------------------------------------

    @web.middleware
    async def _unrouted_in_googles_shape(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The router's 404 and 405 (a path or a method not served) in Google's error shape."""
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            error = ApiError(
                405, "UNIMPLEMENTED",
                f"Method {_shown(request.method)} is not allowed on {_shown(request.path)};"
                f" allowed: {allowed}.",
            )  # fmt: skip
            response = _json(error.body(), 405)
            response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        except web.HTTPNotFound:
            response = _json(not_found(request.path).body(), 404)
        self._metrics.http_requests.labels("other", str(response.status)).inc()
        return response

    def _timed(
        self, method: str, handler: Callable[[web.Request], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def timed(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
                if request.transport is None or request.transport.is_closing():
                    raise ClientGone
            except ApiError as error:
                response = _json(error.body(), error.code)
                if error.code == 408:  # the rest of the body is not waited for
                    response.force_close()
                log.debug("%s: %d %s %s", method, error.code, error.status, error.error_type)
            except (ClientGone, ConnectionError):
                self._metrics.http_disconnects.labels(method).inc()
                log.debug("%s: the client hung up before its answer", method)
                gone = web.Response(status=400)  # never sent: the connection is gone
                gone.force_close()
                return gone
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
        body = await self._json_body(request)
        analysis = parse_request(body, self._model.contract, self._max_text_bytes)
        tenant = path_tenant(request)
        if tenant is not None:
            analysis = dataclasses.replace(analysis, tenant=tenant)
        return _json(await self._score(analysis))

    async def _json_body(self, request: web.Request) -> Any:
        """The decoded JSON body of a request to a method (503 while not serving)."""
        if not self._serving() or self._closing:
            raise ApiError(503, "UNAVAILABLE", "The service is not ready; retry later.")
        if request.content_type != JSON:
            raise invalid(
                "Invalid JSON payload received. Content-Type must be application/json, "
                f"not {_shown(request.content_type) if request.content_type else 'missing'}."
            )
        raw = await self._read_body(request)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise invalid("Invalid JSON payload received.") from None

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body within the body timeout; a client that hangs up: `ClientGone`."""
        try:
            async with asyncio.timeout(self._body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise invalid(
                f"Request payload size exceeds the limit: {self._max_body} bytes.",
                "COMMENT_TOO_LONG",
            ) from None
        except TimeoutError:
            raise ApiError(
                408, "DEADLINE_EXCEEDED",
                f"The request body did not arrive within {self._body_timeout:g} s.",
            ) from None  # fmt: skip
        except ConnectionError:
            raise ClientGone from None
        except web.RequestPayloadError:  # a bad chunk size, a short body: its text is not shown
            raise invalid("The request body could not be read.") from None

    def _admit(self, texts: int) -> None:
        """429 when `texts` more would exceed the pending limit (unless nothing is pending:
        one request larger than the limit is still served, alone)."""
        if self._pending and len(self._pending) + texts > self._max_pending:
            raise ApiError(
                429, "RESOURCE_EXHAUSTED",
                "Too many comments are waiting to be scored; retry later.",
            )  # fmt: skip

    async def _score(self, analysis: Analysis) -> dict[str, Any]:
        """The summary text and (when asked) each sentence, through the shared queue."""
        text = analysis.text
        self._admit(1)  # a full queue refuses before any work on the text
        sentences = None
        if analysis.spans:  # linear in the text, and off the loop all the same
            loop = asyncio.get_running_loop()
            try:
                sentences = await loop.run_in_executor(
                    self._tokenize_executor, split_sentences, text
                )
            except RuntimeError:  # the executor shut down: the worker is stopping
                raise ApiError(503, "UNAVAILABLE", "The server is shutting down.") from None
        texts = [text, *(sentences.texts if sentences else [])]
        self._admit(len(texts))
        replies = [Reply() for _ in texts]
        self._pending.update(replies)
        try:
            ids, detection = await self._tokenize(texts)
            verdict = self._judge(analysis, detection)
            if verdict.refused:
                first = next(iter(analysis.attributes), None) or analysis.dropped[0]
                raise language_refusal(verdict, first)
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
        if self._score_cache is not None:  # the id suggestscore gives a decision on this text
            self._score_cache.remember(
                comment_id(analysis.client_token, text), rows[0], self._policies.current.version
            )
        spans = None
        if sentences is not None:  # one sentence (or none): one span, the summary's score
            scored = rows[1:] if sentences.texts else rows[:1]
            spans = [(b, e, row) for (b, e), row in zip(sentences.spans, scored, strict=True)]
        return build_response(analysis, self._model.contract.labels, rows[0], spans, verdict)

    async def _tokenize(self, texts: list[str]) -> tuple[list[list[int]], Detection | None]:
        """Token ids of `texts` and the language of the first (the comment), on the tokenizer
        thread; None for the language when detection is off."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenize_executor, self._prepare, texts)

    def _prepare(self, texts: list[str]) -> tuple[list[list[int]], Detection | None]:
        """(On the tokenizer thread.) A failure is the request's own: a 400 naming the step."""
        detection = None
        if self._model.language is not None:
            try:
                detection = self._model.language.detect(texts[0])
            except Exception as exc:
                raise invalid(
                    f"The comment's language could not be identified ({type(exc).__name__})."
                ) from None
        try:
            return self._model.tokenizer.encode(texts), detection
        except Exception as exc:
            raise invalid(f"The comment could not be tokenized ({type(exc).__name__}).") from None

    def _judge(self, analysis: Analysis, detection: Detection | None) -> LanguageVerdict:
        """The request's languages, under the mode its tenant has in the policy in force."""
        served = self._model.contract.served_languages
        mode = self._policies.current.primary.language_mode(
            analysis.tenant, HTTP_DEFAULT_UNSUPPORTED_LANGUAGE
        )
        verdict = judge_language(analysis.languages, detection, served, mode)
        self._count_language(verdict)
        return verdict

    def _count_language(self, verdict: LanguageVerdict) -> None:
        """One comment counted by its language (the first unsupported one, else the first
        taken) and, if the model does not serve it, the mode it got."""
        served = self._model.contract.served_languages
        language = (verdict.unsupported or verdict.languages)[0]
        self._metrics.count_language("http", language, served)
        if verdict.mode is not None:
            self._metrics.count_unsupported("http", verdict.mode.value)

    async def _suggestscore(self, request: web.Request) -> web.Response:
        """A moderator's decision: stored as a `Feedback` record, then answered (see the module
        doc). Each request with a valid key is counted by outcome (`suggestion_outcome`), except
        one whose client hung up before its body arrived."""
        self._check_key(request)
        status = 500
        try:
            if self._feedback is None:
                raise ApiError(
                    501, "UNIMPLEMENTED",
                    "comments:suggestscore needs somewhere to keep decisions: this worker serves"
                    " HTTP without Kafka, so set MODERATION_FEEDBACK_FILE (a JSON-lines file).",
                )  # fmt: skip
            body = await self._json_body(request)
            suggestion = parse_suggestion(body, self._model.contract, self._max_text_bytes)
            tenant = path_tenant(request)
            if tenant is not None:
                feedback = suggestion.feedback.model_copy(update={"tenant": tenant})
                suggestion = dataclasses.replace(suggestion, feedback=feedback)
            detected = await self._detect(suggestion)
            feedback = self._with_scores(suggestion.feedback, suggestion.text)
            try:
                await self._feedback.write(feedback)
            except FeedbackUnavailable as exc:
                raise ApiError(503, "UNAVAILABLE", str(exc)) from None
            if self._quality is not None:
                self._quality.count(feedback)
            status = 200
            return _json(suggest_response(suggestion, detected))
        except ApiError as error:
            status = error.code
            raise
        except ClientGone:
            status = 0
            raise
        finally:
            if status:
                self._metrics.feedback_suggestions.labels(suggestion_outcome(status)).inc()

    def _with_scores(self, feedback: Feedback, text: str) -> Feedback:
        """The record with the scores, model and policy version this worker published for its
        id, where the score cache still knows them (else as it is). Looked up by the id, else
        by the text's hash: Coral's analyze sends no clientToken (the comment has no id yet),
        so what it was given is cached under the hash, while its decision names the comment."""
        if self._score_cache is None:
            return feedback
        published = self._score_cache.get(feedback.id)
        if published is None and feedback.id != (by_text := comment_id(None, text)):
            published = self._score_cache.get(by_text)
        if published is None:
            return feedback
        return feedback.model_copy(
            update={
                "scores": published.score_dict(),
                "model": published.model,
                "policy_version": published.policy_version,
            }
        )

    async def _detect(self, suggestion: Suggestion) -> list[str]:
        """`detectedLanguages` of a suggestion: the detection on the tokenizer thread (as for
        analyze), or the model's main served language when detection is off."""
        detector = self._model.language
        if detector is None:
            return [self._model.contract.served_languages[0]]
        loop = asyncio.get_running_loop()
        try:
            detection = await loop.run_in_executor(
                self._tokenize_executor, detector.detect, suggestion.text
            )
        except RuntimeError:  # the executor shut down: the worker is stopping
            raise ApiError(503, "UNAVAILABLE", "The server is shutting down.") from None
        except Exception as exc:
            raise invalid(
                f"The comment's language could not be identified ({type(exc).__name__})."
            ) from None
        return [detection.code]

    async def _discovery(self, request: web.Request) -> web.Response:
        self._check_key(request)
        version = request.query.get("version", API_VERSION)
        if version != API_VERSION:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Discovery document not found for API version {_shown(version)}.",
            )
        host = request.host
        if not (host.isascii() and host.isprintable()):
            raise invalid("The Host header is not a valid host.")
        root = f"{request.scheme}://{host}/"
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
        given_bytes = given.encode("utf-8", "surrogateescape")  # a non-UTF-8 byte: a wrong key
        if not hmac.compare_digest(given_bytes, self._key.encode()):
            raise ApiError(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."
            )
