# ruff: noqa: E501  (one case per line reads best as a table)
"""The hostile HTTP catalog: what a client should never send the Perspective-compatible API, and
the one outcome each must get (issue 22). The worker under test runs with an API key, short
timeouts and a small connection cap (`hostile_api_env`); `testing/reliability/http_probe.py`
sends each case over a raw socket while /healthz is polled.

Outcomes: a status code (`"400"`), a status and the server closing the connection
(`"408 closed"`), `"closed"` (closed with no answer), `"disconnect"` (the client hangs up; the
worker must count it in `moderation_http_client_disconnects_total`, not as an error).

Malformed requests carry `CANARY_TEXT` and the API key where aiohttp used to log them (the
request line, a header line, a chunk size): neither may appear in the worker's log.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

ANALYZE = "/v1alpha1/comments:analyze"
CANARY_TEXT = "CanaryCommentText7f3a"
BODY_TIMEOUT_S = 1.0  # MODERATION_HTTP_API_BODY_TIMEOUT_S of the worker under test
KEEPALIVE_TIMEOUT_S = 2.0  # MODERATION_HTTP_API_KEEPALIVE_TIMEOUT_S
SCORING_WAIT_MS = 1000
MAX_TEXT_BYTES = 20_480  # the default MODERATION_HTTP_API_MAX_TEXT_BYTES (Perspective's)


def hostile_api_env(key: str, max_connections: int) -> dict[str, str]:
    """The HTTP API settings of the worker the catalog runs against."""
    return {
        "MODERATION_HTTP_API_KEY": key,
        "MODERATION_HTTP_API_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "MODERATION_HTTP_API_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_TIMEOUT_S),
        "MODERATION_HTTP_API_MAX_CONNECTIONS": str(max_connections),
        "MODERATION_HTTP_API_MAX_TEXT_BYTES": str(MAX_TEXT_BYTES),
        "MODERATION_LOG_LEVEL": "DEBUG",
        # each batch waits this long for company: a request is still being answered when its
        # client hangs up (case hangup-while-scored)
        "MODERATION_MAX_WAIT_MS": str(SCORING_WAIT_MS),
    }


@dataclass(frozen=True)
class HttpCase:
    name: str
    request: bytes  # sent at once on a fresh connection
    expected: str  # "200", "408 closed", "closed", "disconnect", ...
    hangup: bool = False  # close `hangup_after_s` after sending (expected: "disconnect")
    hangup_after_s: float = 0.2  # the request is being handled by then
    hold: int = 0  # connections opened before this one (and held until it is answered)
    hold_request: bytes = b""  # what each held connection sends (nothing: idle)
    wait_s: float = 10.0  # longest wait for the answer (and, with "closed", for the close)


def post(
    body: bytes,
    key: str,
    *,
    headers: str = "",
    content_type: str = "application/json",
    length: int | None = None,
) -> bytes:
    size = len(body) if length is None else length
    head = f"POST {ANALYZE}?key={key} HTTP/1.1\r\nHost: worker\r\nContent-Type: {content_type}\r\nContent-Length: {size}\r\n{headers}\r\n"
    return head.encode("latin-1") + body  # latin-1: a "\xff" in a header is the byte 0xff


def analyze_body(text: str, spans: bool = False) -> bytes:
    return orjson.dumps(
        {
            "comment": {"text": text},
            "requestedAttributes": {"TOXICITY": {}},
            "spanAnnotations": spans,
        }
    )


def http_catalog(key: str, max_connections: int, full: bool = False) -> list[HttpCase]:
    """All cases; `full` repeats the heavy ones (`make reliability`): the issue's spans request
    three times in a row, and as many stalled bodies as connections allowed and then some."""
    ok = analyze_body("a harmless comment")
    dots = analyze_body("." * (MAX_TEXT_BYTES - 1) + "x", spans=True)
    marks = analyze_body("!?." * ((MAX_TEXT_BYTES - 1) // 3) + "x", spans=True)
    sentences = analyze_body(" ".join(["Go away."] * (MAX_TEXT_BYTES // 10)), spans=True)
    canary = analyze_body(f"{CANARY_TEXT} is in this comment")
    b = key.encode()
    cases = [
        HttpCase("valid", post(ok, key), "200"),
        # issue 22, point 1: span splitting that once took 12 s on the event loop
        HttpCase("spans-20k-dots", post(dots, key), "200", wait_s=30),
        HttpCase("spans-20k-marks", post(marks, key), "200", wait_s=30),
        HttpCase("spans-2k-sentences", post(sentences, key), "200", wait_s=60),
        # keys
        HttpCase("no-key", post(ok, "").replace(b"?key=", b""), "403"),
        HttpCase("wrong-key", post(ok, "nope"), "400"),
        HttpCase("key-not-utf8-header", post(ok, "").replace(b"?key=", b"") .replace(b"\r\n\r\n", b"\r\nX-Goog-Api-Key: \xff\xfe" + b + b"\r\n\r\n", 1), "400"),
        HttpCase("key-not-utf8-query", post(ok, "").replace(b"?key=", b"?key=\xff" + b), "400"),
        HttpCase("key-percent-ff", post(ok, "%FF" + key), "400"),
        # headers
        HttpCase("content-type-not-utf8", post(ok, key, content_type="application/\xff"), "400"),
        HttpCase("content-type-missing", post(ok, key).replace(b"Content-Type: application/json\r\n", b""), "400"),
        HttpCase("host-not-utf8", f"GET /$discovery/rest?key={key} HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n".encode("latin-1"), "400"),
        HttpCase("header-line-control-char", post(canary, key, headers=f"X-Note: {CANARY_TEXT}\x01\r\n"), "400"),
        HttpCase("header-line-no-colon", post(canary, key, headers=f"X-Goog-Api-Key {key}\r\n"), "400"),
        HttpCase("header-line-too-long", post(ok, key, headers=f"X-Pad: {'p' * 9000}{CANARY_TEXT}\r\n"), "400"),
        HttpCase("headers-too-many", post(ok, key, headers="".join(f"X-H{i}: {CANARY_TEXT}\r\n" for i in range(200))), "400"),
        HttpCase("request-line-garbage", f"GAR<BAGE {ANALYZE}?key={key}&t={CANARY_TEXT} HTTP/1.1\r\n\r\n".encode(), "400"),
        HttpCase("request-line-too-long", f"GET /{'a' * 9000}?key={key} HTTP/1.1\r\nHost: w\r\n\r\n".encode(), "400"),
        HttpCase("http-version-garbage", f"POST {ANALYZE}?key={key} HTTP/9.9\r\nHost: w\r\n\r\n".encode(), "400"),
        HttpCase("not-http-at-all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + CANARY_TEXT.encode(), "400"),
        # bodies
        HttpCase("chunk-size-is-text", f"POST {ANALYZE}?key={key} HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{CANARY_TEXT}\r\n{{}}\r\n0\r\n\r\n".encode(), "400"),
        HttpCase("length-and-chunked", post(canary, key, headers="Transfer-Encoding: chunked\r\n"), "400"),
        HttpCase("body-too-large", post(b"{" + b" " * 300_000 + b"}", key), "400"),
        HttpCase("body-not-json", post(CANARY_TEXT.encode(), key), "400"),
        HttpCase("body-nested-deep", post(b"[" * 5_000 + b"]" * 5_000, key), "400"),
        HttpCase("body-nan", post(b'{"comment": {"text": "x"}, "requestedAttributes": {"TOXICITY": {"scoreThreshold": NaN}}}', key), "400"),
        HttpCase("body-languages-many", post(orjson.dumps({"comment": {"text": "x"}, "requestedAttributes": {"TOXICITY": {}}, "languages": ["de"] * 20_000}), key), "400"),
        # issue 22, point 4: slow and idle clients are cut off
        HttpCase("body-stalls", post(canary[:20], key, length=len(canary)), "408 closed"),
        HttpCase("body-length-huge-stalls", post(canary[:20], key, length=10**12), "408 closed"),
        HttpCase("headers-stall", f"POST {ANALYZE}?key={key} HTTP/1.1\r\nHost: w\r\n".encode(), "closed"),
        HttpCase("connection-idle", b"", "closed"),
        HttpCase("connections-over-cap", post(ok, key), "503", hold=max_connections),
        # issue 22, point 5: hanging up is not an error
        HttpCase("hangup-mid-body", post(canary[:20], key, length=len(canary)), "disconnect", hangup=True),
        HttpCase("hangup-while-scored", post(sentences, key), "disconnect", hangup=True),
        HttpCase("valid-after-all", post(ok, key), "200"),
    ]  # fmt: skip
    if full:
        cases[1:2] = [
            HttpCase(f"spans-20k-dots-{i}", post(dots, key), "200", wait_s=30) for i in range(3)
        ]
        cases += [
            HttpCase(
                "stalled-bodies-over-cap",
                post(canary[:20], key, length=len(canary)),
                "503",
                hold=max_connections + 144,
                hold_request=post(canary[:20], key, length=len(canary)),
            ),
            HttpCase("valid-at-the-end", post(ok, key), "200"),
        ]
    return cases
