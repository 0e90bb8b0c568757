"""Hostile HTTP clients against the real worker's Perspective-compatible API (issue 22): each
point of the issue on its own, then the whole catalog (`testing/reliability/http_catalog.py`)
with /healthz watched throughout and the RSS bounded. `make reliability` runs the catalog in
full (scripts/reliability.py, scenario http)."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.http import http_get, metric_sample
from testing.ports import free_port
from testing.reliability.http_catalog import (
    ANALYZE,
    BODY_TIMEOUT_S,
    CANARY_TEXT,
    HttpCase,
    hostile_api_env,
    http_catalog,
)
from testing.reliability.http_probe import CatalogRun, raw_request, run_catalog
from testing.topics import fresh_topics
from testing.worker_process import QUICK_ENV, WorkerProcess, start_worker, worker_env

pytestmark = pytest.mark.integration

KEY = f"canarykey{uuid.uuid4().hex[:16]}"
MAX_CONNECTIONS = 16
HEALTHZ_BOUND_S = 2.0  # /healthz once took 12 s during one spans request (issue 22)


@pytest.fixture(scope="module")
def hostile_api(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker with the API on, a key, short timeouts, 16 connections, logging at DEBUG."""
    log = tmp_path_factory.mktemp("http-hostile") / "worker.log"
    overrides = (
        QUICK_ENV
        | {"MODERATION_MODEL": str(tiny_model_dir), "MODERATION_HTTP_API_PORT": str(free_port())}
        | hostile_api_env(KEY, MAX_CONNECTIONS)
    )
    topics = fresh_topics(kafka_bootstrap, "http-hostile")
    worker = start_worker(kafka_bootstrap, topics, log_path=log, overrides=overrides)
    yield worker
    assert worker.stop() == 0, worker.log()[-3000:]


def cases(*names: str) -> list[HttpCase]:
    chosen = [case for case in http_catalog(KEY, MAX_CONNECTIONS) if case.name in names]
    assert len(chosen) == len(names)
    return chosen


def probe(worker: WorkerProcess, *names: str) -> CatalogRun:
    return run_catalog(worker, cases(*names))


def api_port(worker: WorkerProcess) -> int:
    return int(worker.env["MODERATION_HTTP_API_PORT"])


def test_spans_of_20k_dots_are_answered_while_healthz_answers(hostile_api: WorkerProcess) -> None:
    """Point 1: `"." * 20479 + "x"` with spanAnnotations once held the event loop for 12 s."""
    run = probe(hostile_api, "spans-20k-dots", "spans-20k-marks", "spans-2k-sentences")
    assert run.unexpected == {}, run.figures()
    assert run.healthz_worst_s < HEALTHZ_BOUND_S, run.figures()
    assert run.healthz_failures == 0


def test_stalled_and_idle_connections_are_closed_by_the_timeouts(
    hostile_api: WorkerProcess,
) -> None:
    """Point 4: a body that stops half-way gets 408 and its connection closed; headers that
    never end and a connection that sends nothing are closed (they stayed open for good)."""
    run = probe(
        hostile_api, "body-stalls", "body-length-huge-stalls", "headers-stall", "connection-idle"
    )
    assert run.unexpected == {}, run.figures()
    # the 408 comes with the body timeout, the close at most the lingering time (2 s) later
    assert run.seconds["body-stalls"] < BODY_TIMEOUT_S + 2 + 3, run.seconds


def test_connections_over_the_cap_get_503_and_the_api_serves_on(
    hostile_api: WorkerProcess,
) -> None:
    """Point 4: at MODERATION_HTTP_API_MAX_CONNECTIONS one more connection is refused."""
    before = metric_sample(
        hostile_api.get("/metrics").body, "moderation_http_connections_refused_total"
    )
    run = probe(hostile_api, "connections-over-cap", "valid-after-all")
    assert run.unexpected == {}, run.figures()
    after = metric_sample(
        hostile_api.get("/metrics").body, "moderation_http_connections_refused_total"
    )
    assert after > before


def test_a_client_hanging_up_is_a_disconnect_not_an_internal_error(
    hostile_api: WorkerProcess,
) -> None:
    """Point 5: hanging up mid-body or while scored was a 500, a traceback and an error."""
    run = probe(hostile_api, "hangup-mid-body", "hangup-while-scored")
    assert run.unexpected == {}, run.figures()
    metrics = hostile_api.get("/metrics").body
    assert metric_sample(metrics, "moderation_errors_total", kind="http") == 0
    assert metric_sample(metrics, "moderation_http_client_disconnects_total", method="analyze") >= 2
    assert "Traceback" not in hostile_api.log()


@pytest.mark.parametrize(
    "name",
    [
        "key-not-utf8-header",
        "key-percent-ff",
        "content-type-not-utf8",
        "host-not-utf8",
        "header-line-control-char",  # refused by aiohttp's parser: answered in the same shape
        "header-line-no-colon",
    ],
)
def test_bad_bytes_in_a_header_are_400_in_googles_shape(
    hostile_api: WorkerProcess, name: str
) -> None:
    """Point 5: a non-UTF-8 byte in the API key header was a 500 with a traceback; a header
    line aiohttp's parser refuses was a text/plain 400. Now any bad header: 400, Google's shape."""
    [case] = cases(name)
    status, headers, body = raw_request(api_port(hostile_api), case.request)
    assert status == "400", body
    error = json.loads(body)["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert headers["content-type"].startswith("application/json")


def test_no_request_line_header_or_body_reaches_the_log(hostile_api: WorkerProcess) -> None:
    """Point 6: malformed requests carrying the key (request line, header line) and comment
    text (a chunk size, a header value), at DEBUG: neither is in any log line."""
    run = probe(
        hostile_api,
        "header-line-control-char",
        "header-line-no-colon",
        "header-line-too-long",
        "headers-too-many",
        "request-line-garbage",
        "request-line-too-long",
        "http-version-garbage",
        "not-http-at-all",
        "chunk-size-is-text",
        "length-and-chunked",
        "body-not-json",
        "key-not-utf8-query",
        "valid",
    )
    assert run.unexpected == {}, run.figures()
    log = hostile_api.log()
    assert " DEBUG " in log  # the worker logs at DEBUG
    assert KEY not in log
    assert CANARY_TEXT not in log


def test_no_version_banner_on_either_port(hostile_api: WorkerProcess) -> None:
    """Point 9: `Server: Python/3.x aiohttp/3.x` named the versions to any client."""
    requests = [
        (hostile_api.port, b"GET /healthz HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n"),
        (hostile_api.port, b"GET /nowhere HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n"),
        (hostile_api.port, b"GAR<BAGE / HTTP/1.1\r\n\r\n"),
        (api_port(hostile_api), f"GET /$discovery/rest?key={KEY} HTTP/1.1\r\n\r\n".encode()),
        (api_port(hostile_api), f"POST {ANALYZE} HTTP/1.1\r\nHost: w\r\n\r\n".encode()),
        (api_port(hostile_api), b"GAR<BAGE / HTTP/1.1\r\n\r\n"),
    ]  # fmt: skip
    for port, request in requests:
        status, headers, _ = raw_request(port, request)
        assert status.isdigit(), request
        assert headers.get("server") == "moderation-worker", (request, headers)


def test_the_hostile_http_catalog(hostile_api: WorkerProcess) -> None:
    """Every case gets its one outcome, /healthz answers throughout, the RSS stays bounded."""
    run = run_catalog(hostile_api, http_catalog(KEY, MAX_CONNECTIONS))
    figures = run.figures()
    print(json.dumps(figures, indent=1))
    assert run.unexpected == {}, figures
    assert run.healthz_worst_s < HEALTHZ_BOUND_S and run.healthz_failures == 0, figures
    assert run.rss_after_mib - run.rss_before_mib < 150, figures
    assert hostile_api.get("/readyz").status == 200


def outside_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # nothing is sent: only the route is looked up
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_without_a_key_the_api_answers_on_loopback_only(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Point 9: the API with no key bound every interface; now, with MODERATION_HTTP_API_HOST
    unset, it listens on 127.0.0.1 only (a sidecar in the pod can call it) and says so."""
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no address beside loopback to connect to")
    port = free_port()
    overrides = QUICK_ENV | {
        "MODERATION_MODEL": str(tiny_model_dir), "MODERATION_HTTP_API_PORT": str(port),
    }  # fmt: skip
    env = worker_env(
        kafka_bootstrap, fresh_topics(kafka_bootstrap, "http-bind"), free_port(), overrides
    )
    del env["MODERATION_HTTP_API_HOST"]  # the default, as a deployment gets it
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        assert http_get(f"http://127.0.0.1:{port}/$discovery/rest").status == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()
        assert "without an API key: open to this pod only" in worker.log()
    finally:
        assert worker.stop() == 0
