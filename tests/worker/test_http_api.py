"""The Perspective-compatible HTTP API of the real worker process (real broker, tiny model):
scores, spans, errors, the discovery document, clients from PyPI and npm, shared batches,
back-pressure, the API key, and that no text reaches the log."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from testing.http import http_get, http_post, metric_sample
from testing.kafka import comment, produce, read_all
from testing.npm import PERSPECTIVE_CLIENT, NpmUnavailable, npm_install
from testing.ports import free_port
from testing.topics import fresh_topics
from testing.worker_process import QUICK_ENV, REPO_ROOT, WorkerProcess, start_worker
from worker.backends.model import ServedModel, load_served_model

pytestmark = pytest.mark.integration

MAX_TEXT_BYTES = 2000


def start_api_worker(bootstrap: str, model_dir: Path, log_path: Path, **env: str) -> WorkerProcess:
    topics = fresh_topics(bootstrap, "http-api")
    overrides = QUICK_ENV | {
        "MODERATION_MODEL": str(model_dir),
        "MODERATION_HTTP_API_PORT": str(free_port()),
        "MODERATION_HTTP_API_MAX_TEXT_BYTES": str(MAX_TEXT_BYTES),
        "MODERATION_LOG_LEVEL": "DEBUG",
    }
    return start_worker(bootstrap, topics, log_path=log_path, overrides=overrides | env)


@pytest.fixture(scope="module")
def api(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker with the API on, logging at DEBUG, shared by the tests of this module."""
    log = tmp_path_factory.mktemp("http-api") / "worker.log"
    worker = start_api_worker(kafka_bootstrap, tiny_model_dir, log)
    yield worker
    assert worker.stop() == 0, worker.log()[-3000:]  # the API does not get in the way of a drain


@pytest.fixture(scope="module")
def scorer(tiny_model_dir: Path) -> ServedModel:
    return load_served_model(tiny_model_dir, device="cpu", precision="fp32")


def analyze(worker: WorkerProcess, body: Any, query: str = "") -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    result = http_post(f"{worker.api_url}/v1alpha1/comments:analyze{query}", raw)
    return result.status, json.loads(result.body)


def expected(scorer: ServedModel, text: str) -> dict[str, float]:
    """Each attribute the artifact maps (`api_attributes`), as the model scores its label."""
    row = scorer.score([text])[0]
    labels = scorer.contract.labels
    attributes = scorer.contract.api_attributes
    return {name: float(row[labels.index(label)]) for name, label in attributes.items()}


def utf16(text: str, index: int) -> int:
    return len(text[:index].encode("utf-16-le")) // 2


# ------------------------------------------------------------------------------- answers


def test_scores_every_attribute_as_the_model_scores_the_text(
    api: WorkerProcess, scorer: ServedModel
) -> None:
    text = "You are a complete idiot and everybody here knows it."
    attributes = scorer.contract.api_attributes
    assert set(attributes.values()) == set(scorer.contract.labels)  # every label is served
    status, body = analyze(
        api,
        {
            "comment": {"text": text, "type": "PLAIN_TEXT"},
            "requestedAttributes": {name: {} for name in attributes},
            "languages": ["en"],
            "doNotStore": True,
            "clientToken": "token-1",
            "sessionId": "s",
            "communityId": "c",
            "context": {"entries": [{"text": "parent"}]},
        },
    )
    assert status == 200, body
    assert body["clientToken"] == "token-1"
    assert body["languages"] == ["en"] and body["detectedLanguages"] == ["en"]
    assert set(body["attributeScores"]) == set(attributes)
    for name, value in expected(scorer, text).items():
        score = body["attributeScores"][name]
        assert score["summaryScore"]["type"] == "PROBABILITY"
        assert score["summaryScore"]["value"] == pytest.approx(value, abs=1e-5)
        assert "spanScores" not in score  # only with spanAnnotations, as Perspective


def test_span_scores_per_sentence_in_utf16_code_units(
    api: WorkerProcess, scorer: ServedModel
) -> None:
    sentences = ["Party time 🎉🎉 you idiot!", "I like your name.", "Ünïcödé ends here"]
    text = "  " + "  ".join(sentences) + " "
    status, body = analyze(
        api,
        {
            "comment": {"text": text},
            "requestedAttributes": {"TOXICITY": {}, "INSULT": {}},
            "spanAnnotations": True,
        },
    )
    assert status == 200, body
    whole = expected(scorer, text)
    for name in ("TOXICITY", "INSULT"):
        spans = body["attributeScores"][name]["spanScores"]
        assert len(spans) == 3
        for span, sentence in zip(spans, sentences, strict=True):
            start = text.index(sentence)
            assert (span["begin"], span["end"]) == (
                utf16(text, start),
                utf16(text, start + len(sentence)),
            )
            assert span["score"]["value"] == pytest.approx(
                expected(scorer, sentence)[name], abs=1e-5
            )
        summary = body["attributeScores"][name]["summaryScore"]["value"]
        assert summary == pytest.approx(whole[name], abs=1e-5)
    # the emoji are two UTF-16 units each: the first span ends 2 units after its 23 characters
    assert body["attributeScores"]["TOXICITY"]["spanScores"][0]["end"] == 2 + 24 + 2


def test_one_sentence_is_one_span_with_the_summary_score(api: WorkerProcess) -> None:
    status, body = analyze(
        api,
        {
            "comment": {"text": " what a load of garbage "},
            "requestedAttributes": {"THREAT": {}},
            "spanAnnotations": True,
        },
    )
    assert status == 200, body
    threat = body["attributeScores"]["THREAT"]
    [span] = threat["spanScores"]
    assert (span["begin"], span["end"]) == (1, 23)
    assert span["score"] == threat["summaryScore"]


def test_score_threshold_drops_scores_below_it(api: WorkerProcess, scorer: ServedModel) -> None:
    text = "I will find you and hurt you."
    values = expected(scorer, text)
    status, body = analyze(
        api,
        {
            "comment": {"text": text},
            "requestedAttributes": {
                "TOXICITY": {"scoreThreshold": min(1.0, values["TOXICITY"] + 1e-3)},
                "THREAT": {"scoreThreshold": max(0.0, values["THREAT"] - 1e-3)},
                "INSULT": {"scoreType": "PROBABILITY"},
            },
        },
    )
    assert status == 200, body
    assert set(body["attributeScores"]) == {"THREAT", "INSULT"}
    assert "clientToken" not in body


# -------------------------------------------------------------------------------- errors

JSON = "application/json"
TOX = {"TOXICITY": {}}


def body_with(text: Any = "hi", **fields: Any) -> dict[str, Any]:
    return {"comment": {"text": text}, "requestedAttributes": TOX} | fields


# (case, body, content type, Perspective's errorType); each answers 400 INVALID_ARGUMENT
ERRORS: list[tuple[str, Any, str | None, str]] = [
    ("malformed JSON", b'{"comment": {"text": "hi"', JSON, "INVALID_REQUEST"),
    ("not an object", b"[1, 2]", JSON, "INVALID_REQUEST"),
    ("wrong content type", orjson.dumps(body_with()), "text/plain", "INVALID_REQUEST"),
    ("no content type", orjson.dumps(body_with()), None, "INVALID_REQUEST"),
    ("missing text", body_with(comment={}), JSON, "COMMENT_EMPTY"),
    ("missing comment", {"requestedAttributes": TOX}, JSON, "COMMENT_EMPTY"),
    ("empty text", body_with(""), JSON, "COMMENT_EMPTY"),
    ("text not a string", body_with(5), JSON, "INVALID_REQUEST"),
    ("text too long", body_with("é" * (MAX_TEXT_BYTES // 2 + 1)), JSON, "COMMENT_TOO_LONG"),
    ("no attributes", {"comment": {"text": "hi"}}, JSON, "NO_REQUESTED_ATTRIBUTES"),
    ("empty attributes", body_with(requestedAttributes={}), JSON, "NO_REQUESTED_ATTRIBUTES"),
    ("unknown attribute", body_with(requestedAttributes={"NOPE": {}}), JSON, "INVALID_REQUEST"),
    (
        "attribute not served",
        body_with(requestedAttributes={"TOXICITY": {}, "FLIRTATION": {}}),
        JSON,
        "INVALID_REQUEST",
    ),
    (
        "score type",
        body_with(requestedAttributes={"TOXICITY": {"scoreType": "STD_DEV_SCORE"}}),
        JSON,
        "INVALID_REQUEST",
    ),
    (
        "threshold over 1",
        body_with(requestedAttributes={"TOXICITY": {"scoreThreshold": 2}}),
        JSON,
        "INVALID_REQUEST",
    ),
    ("language", body_with(languages=["es"]), JSON, "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE"),
    ("one of two", body_with(languages=["en", "fr"]), JSON, "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE"),
    ("HTML", body_with(comment={"text": "<b>hi</b>", "type": "HTML"}), JSON, "INVALID_REQUEST"),
]


def test_bad_requests_get_googles_error_shape_and_never_reach_the_model(
    api: WorkerProcess,
) -> None:
    before = api.get("/metrics").body
    url = f"{api.api_url}/v1alpha1/comments:analyze?key=k&alt=json"
    for case, body, content_type, error_type in ERRORS:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        result = http_post(url, raw, content_type)
        assert result.status == 400, (case, result.body)
        error = json.loads(result.body)["error"]
        assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT"), case
        assert error["message"], case
        assert error["details"][0]["errorType"] == error_type, case
    after = api.get("/metrics").body
    assert metric_sample(after, "moderation_batch_size_count") == metric_sample(
        before, "moderation_batch_size_count"
    )
    counted = metric_sample(after, "moderation_http_requests_total", method="analyze", code="400")
    assert counted - metric_sample(
        before, "moderation_http_requests_total", method="analyze", code="400"
    ) == len(ERRORS)
    # English in any spelling is accepted, and the server still serves
    status, body = analyze(
        api,
        {
            "comment": {"text": "hi"},
            "requestedAttributes": {"TOXICITY": {}},
            "languages": ["EN-us"],
        },
    )
    assert status == 200 and body["languages"] == ["EN-us"]


# ------------------------------------------------------------------- discovery and clients


def test_discovery_document_points_at_the_server(api: WorkerProcess) -> None:
    result = http_get(f"{api.api_url}/$discovery/rest?version=v1alpha1&key=anything")
    assert result.status == 200
    document = json.loads(result.body)
    assert document["rootUrl"] == f"{api.api_url}/"
    method = document["resources"]["comments"]["methods"]["analyze"]
    assert (method["httpMethod"], method["path"]) == ("POST", "v1alpha1/comments:analyze")
    assert http_get(f"{api.api_url}/$discovery/rest?version=v2").status == 404


def test_googles_python_client_built_from_the_discovery_url(
    api: WorkerProcess, scorer: ServedModel
) -> None:
    """Perspective's documented Python usage, only the discovery URL changed."""
    from googleapiclient import discovery
    from googleapiclient.errors import HttpError

    client = discovery.build(
        "commentanalyzer",
        "v1alpha1",
        developerKey="any-key",
        discoveryServiceUrl=f"{api.api_url}/$discovery/rest?version=v1alpha1",
        static_discovery=False,
    )
    text = "friendly neighbourhood comment"
    response = (
        client.comments()
        .analyze(body={"comment": {"text": text}, "requestedAttributes": {"TOXICITY": {}}})
        .execute()
    )
    value = response["attributeScores"]["TOXICITY"]["summaryScore"]["value"]
    assert value == pytest.approx(expected(scorer, text)["TOXICITY"], abs=1e-5)
    with pytest.raises(HttpError) as failed:
        client.comments().analyze(
            body={"comment": {"text": text}, "requestedAttributes": {"FLIRTATION": {}}}
        ).execute()
    assert failed.value.resp.status == 400
    assert "Unknown requested attribute: FLIRTATION" in str(failed.value)


NODE_CLIENT = r"""
const path = require('path');
const Perspective = require('perspective-api-client');
// the client posts with the axios module it requires: one interceptor points it at our server
const axios = require(require.resolve('axios', {
  paths: [path.dirname(require.resolve('perspective-api-client'))],
}));
axios.interceptors.request.use((config) => {
  config.url = config.url.replace('https://commentanalyzer.googleapis.com', process.env.API_BASE);
  return config;
});
const client = new Perspective({apiKey: 'any-key'});
(async () => {
  const out = {};
  out.ok = await client.analyze(process.env.TEXT, {attributes: ['toxicity', 'insult']});
  try {
    await client.analyze('fine', {attributes: ['flirtation']});
  } catch (err) {
    out.error = {name: err.name, message: err.message, status: err.response.status};
  }
  console.log(JSON.stringify(out));
})().catch((err) => { console.error(err); process.exit(1); });
"""


@pytest.fixture(scope="session")
def npm_modules() -> Path:
    try:
        return npm_install(REPO_ROOT / ".cache" / "npm-clients", PERSPECTIVE_CLIENT)
    except NpmUnavailable as exc:
        pytest.skip(f"npm client perspective-api-client not available: {exc}")


def test_npm_perspective_api_client(
    api: WorkerProcess, scorer: ServedModel, npm_modules: Path, tmp_path: Path
) -> None:
    """npm's `perspective-api-client`, unchanged but for the host its requests go to."""
    script = tmp_path / "client.js"
    script.write_text(NODE_CLIENT)
    text = "You are a complete idiot."
    result = subprocess.run(
        ["node", str(script)],
        env=os.environ | {"NODE_PATH": str(npm_modules), "API_BASE": api.api_url, "TEXT": text},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    values = expected(scorer, text)
    for name in ("TOXICITY", "INSULT"):
        got = out["ok"]["attributeScores"][name]["summaryScore"]["value"]
        assert got == pytest.approx(values[name], abs=1e-5)
    assert out["error"]["name"] == "ResponseError" and out["error"]["status"] == 400
    assert "Unknown requested attribute: FLIRTATION" in out["error"]["message"]


# ------------------------------------------------------------------ batching and the log


async def _concurrent(url: str, bodies: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    async with aiohttp.ClientSession() as session:

        async def one(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with session.post(url, json=body) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(body) for body in bodies))


def test_concurrent_requests_share_forward_passes(api: WorkerProcess, scorer: ServedModel) -> None:
    texts = [f"comment number {i}: " + "you are wrong " * (i % 5) for i in range(48)]
    bodies = [{"comment": {"text": t}, "requestedAttributes": {"INSULT": {}}} for t in texts]
    before = api.metrics()
    answers = asyncio.run(_concurrent(f"{api.api_url}/v1alpha1/comments:analyze", bodies))
    after = api.metrics()
    assert [status for status, _ in answers] == [200] * len(texts)
    for text, (_, body) in zip(texts, answers, strict=True):
        value = body["attributeScores"]["INSULT"]["summaryScore"]["value"]
        assert value == pytest.approx(expected(scorer, text)["INSULT"], abs=1e-5)
    batches = after["moderation_batch_size_count"] - before["moderation_batch_size_count"]
    texts_scored = after["moderation_batch_size_sum"] - before["moderation_batch_size_sum"]
    assert texts_scored == len(texts)  # one text each (no spans), nothing else on this worker
    # these short texts pad to 32 tokens: a batch of up to 64 is one forward pass within the
    # 2048-token budget, so fewer batches than requests is fewer forward passes
    assert batches < len(texts) / 2, f"{len(texts)} requests took {batches} batches"
    assert after["moderation_http_request_duration_seconds_count"] >= len(texts)


def test_kafka_records_and_http_requests_are_served_at_once(
    api: WorkerProcess, kafka_bootstrap: str, scorer: ServedModel
) -> None:
    texts = [f"record {i}: " + "go away " * (i % 4) for i in range(30)]
    records = [comment(f"k{i}", text) for i, text in enumerate(texts)]
    bodies = [{"comment": {"text": t}, "requestedAttributes": {"TOXICITY": {}}} for t in texts]

    async def both() -> list[tuple[int, dict[str, Any]]]:
        url = f"{api.api_url}/v1alpha1/comments:analyze"
        produced = produce(kafka_bootstrap, api.env["MODERATION_INPUT_TOPIC"], records)
        answers, _ = await asyncio.gather(_concurrent(url, bodies), produced)
        return answers

    answers = asyncio.run(both())
    outputs = asyncio.run(
        read_all(kafka_bootstrap, api.env["MODERATION_OUTPUT_TOPIC"], len(records), settle=0.5)
    )
    assert sorted(r.key for r in outputs) == sorted(k for k, _ in records)
    for text, (status, body) in zip(texts, answers, strict=True):
        assert status == 200
        value = body["attributeScores"]["TOXICITY"]["summaryScore"]["value"]
        assert value == pytest.approx(expected(scorer, text)["TOXICITY"], abs=1e-5)


def test_no_text_reaches_the_log_with_or_without_do_not_store(api: WorkerProcess) -> None:
    marker = f"secretmarker{uuid.uuid4().hex}"
    for do_not_store in (True, False):
        status, _ = analyze(
            api,
            {
                "comment": {"text": f"{marker} is a good sentence. {marker} again!"},
                "requestedAttributes": {"TOXICITY": {}},
                "doNotStore": do_not_store,
                "spanAnnotations": True,
            },
        )
        assert status == 200
    # and the error paths: too long, not a string, malformed, unsupported language
    for body in (
        {"comment": {"text": marker * 200}, "requestedAttributes": {"TOXICITY": {}}},
        {"comment": {"text": [marker]}, "requestedAttributes": {"TOXICITY": {}}},
        {"comment": {"text": marker}, "requestedAttributes": {"TOXICITY": {}}, "languages": ["de"]},
    ):
        status, error = analyze(api, body)
        assert status == 400 and marker not in json.dumps(error)
    assert analyze(api, f'{{"comment": {{"text": "{marker}"'.encode())[0] == 400
    log = api.log()
    assert "comments:analyze" in log or "HTTP API" in log  # the log is the worker's, at DEBUG
    assert marker not in log


# ------------------------------------------------------------- key and back-pressure


@pytest.fixture(scope="module")
def strict_api(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """An API key configured, at most 4 texts pending, one text per batch."""
    log = tmp_path_factory.mktemp("http-api-strict") / "worker.log"
    worker = start_api_worker(
        kafka_bootstrap, tiny_model_dir, log,
        MODERATION_HTTP_API_KEY="s3cret", MODERATION_HTTP_API_MAX_PENDING="4",
        MODERATION_MAX_BATCH_SIZE="1",
    )  # fmt: skip
    yield worker
    worker.stop()


def test_a_configured_key_is_checked_the_way_google_does(strict_api: WorkerProcess) -> None:
    body = orjson.dumps({"comment": {"text": "hi"}, "requestedAttributes": {"TOXICITY": {}}})
    url = f"{strict_api.api_url}/v1alpha1/comments:analyze"
    missing = http_post(url, body)
    wrong = http_post(url + "?key=nope", body)
    right = http_post(url + "?key=s3cret&alt=json", body)
    assert (missing.status, json.loads(missing.body)["error"]["status"]) == (
        403,
        "PERMISSION_DENIED",
    )
    assert (wrong.status, json.loads(wrong.body)["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert right.status == 200, right.body
    assert http_get(f"{strict_api.api_url}/$discovery/rest?version=v1alpha1").status == 403
    assert (
        http_get(f"{strict_api.api_url}/$discovery/rest?version=v1alpha1&key=s3cret").status == 200
    )


def test_a_full_queue_answers_429_and_nothing_else_breaks(strict_api: WorkerProcess) -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(3))  # 4 texts per request
    bodies = [
        {
            "comment": {"text": text},
            "requestedAttributes": {"TOXICITY": {}},
            "spanAnnotations": True,
        }
        for _ in range(40)
    ]
    url = f"{strict_api.api_url}/v1alpha1/comments:analyze?key=s3cret"
    answers = asyncio.run(_concurrent(url, bodies))
    statuses = [status for status, _ in answers]
    assert set(statuses) == {200, 429}, statuses
    refused = [body for status, body in answers if status == 429]
    assert all(body["error"]["status"] == "RESOURCE_EXHAUSTED" for body in refused)
    metrics = strict_api.get("/metrics").body
    assert metric_sample(metrics, "moderation_http_requests_total", code="429") == len(refused)
    assert metric_sample(metrics, "moderation_http_pending_texts") == 0
    # once the queue drained, requests are served again
    assert asyncio.run(_concurrent(url, bodies[:1]))[0][0] == 200


def test_sigterm_under_http_load_answers_or_refuses_and_exits_0(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    worker = start_api_worker(kafka_bootstrap, tiny_model_dir, tmp_path / "worker.log")
    url = f"{worker.api_url}/v1alpha1/comments:analyze"
    body = {
        "comment": {"text": "One sentence. Two sentences. Three!"},
        "requestedAttributes": {"TOXICITY": {}},
        "spanAnnotations": True,
    }

    async def load_then_stop() -> list[Any]:
        async with aiohttp.ClientSession() as session:

            async def one(delay: float) -> int:
                await asyncio.sleep(delay)
                async with session.post(url, json=body) as response:
                    await response.read()
                    return response.status

            requests = [asyncio.create_task(one(i * 0.01)) for i in range(100)]
            await asyncio.sleep(0.3)
            worker.proc.terminate()  # SIGTERM while requests keep arriving
            return await asyncio.gather(*requests, return_exceptions=True)

    results = asyncio.run(load_then_stop())
    code = worker.proc.wait(timeout=60)
    assert code == 0, worker.log()[-3000:]
    statuses = [r for r in results if isinstance(r, int)]
    failures = [r for r in results if not isinstance(r, int)]
    assert 200 in statuses
    assert set(statuses) <= {200, 503}, statuses
    assert all(isinstance(f, aiohttp.ClientConnectionError) for f in failures), failures
