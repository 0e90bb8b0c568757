"""`POST /v1alpha1/comments:suggestscore` of the real worker process: Coral Talk's exact request
and google-api-python-client's both become `Feedback` records on the feedback topic (real broker),
answered only once the broker acknowledged them; a refused record is a 503 and is not written;
HTTP only, the records are appended to MODERATION_FEEDBACK_FILE, and without one the answer is
501. Every decision is counted by outcome."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from schemas import Feedback
from testing.broker import TansuBroker
from testing.coral import coral_request
from testing.http import http_post, metric_sample
from testing.kafka import consume_until, create_topics
from testing.ports import free_port
from testing.topics import Topics, fresh_topics
from testing.worker_process import (
    QUICK_ENV,
    REPO_ROOT,
    WorkerProcess,
    refusal_line,
    start_worker,
    worker_env,
)

pytestmark = pytest.mark.integration

SCHEMA = json.loads((REPO_ROOT / "schemas" / "feedback.schema.json").read_text())
CLOSED = "127.0.0.1:9"  # HTTP only: nothing listens there, nothing may try to
# Above the producer's largest request (aiokafka's max_request_size, 1 MiB): the producer refuses
# such a record before it is sent. The workers here take texts this long (below).
OVER_PRODUCER_LIMIT = 1_200_000
MAX_TEXT_BYTES = 2_000_000
TEXT = "This is the kind of comment our moderators removed, you absolute idiot."


def suggest(
    worker: WorkerProcess, body: Any, query: str = "?key=K", endpoint: str = "/v1alpha1"
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    result = http_post(f"{worker.api_url}{endpoint}/comments:suggestscore{query}", raw)
    return result.status, json.loads(result.body)


def outcomes(worker: WorkerProcess) -> dict[str, float]:
    body = worker.get("/metrics").body
    return {
        outcome: metric_sample(body, "moderation_feedback_suggestions_total", outcome=outcome)
        for outcome in ("stored", "invalid", "unavailable", "unconfigured")
    }


def valid_record(raw: bytes) -> Feedback:
    """A record as the contract reads it: the committed JSON Schema and the pydantic model."""
    jsonschema.validate(orjson.loads(raw), SCHEMA)
    return Feedback.model_validate_json(raw)


def recent(feedback: Feedback) -> bool:
    decided = datetime.fromtimestamp(feedback.decided_at_ms() / 1000, UTC)
    return timedelta(0) <= datetime.now(UTC) - decided < timedelta(minutes=5)


# ------------------------------------------------------------------------- with Kafka


@pytest.fixture(scope="module")
def feedback_topic(kafka_bootstrap: str) -> str:
    """A fresh feedback topic of one partition (records read back in the order written)."""
    topics = Topics.fresh("feedback")
    asyncio.run(create_topics(kafka_bootstrap, {topics.output: 1}))
    return topics.output


@pytest.fixture(scope="module")
def api(
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    feedback_topic: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """A worker with Kafka and the API, writing decisions to `feedback_topic`, taking texts up
    to 2 MB (so that a record over the producer's limit can be asked for)."""
    overrides = QUICK_ENV | {
        "MODERATION_MODEL": str(tiny_model_dir),
        "MODERATION_HTTP_API_PORT": str(free_port()),
        "MODERATION_HTTP_API_MAX_TEXT_BYTES": str(MAX_TEXT_BYTES),
        "MODERATION_FEEDBACK_TOPIC": feedback_topic,
    }
    worker = start_worker(
        kafka_bootstrap, fresh_topics(kafka_bootstrap, "suggest"),
        log_path=tmp_path_factory.mktemp("suggest") / "worker.log", overrides=overrides,
    )  # fmt: skip
    yield worker
    assert worker.stop() == 0, worker.log()[-3000:]


def read_until(
    bootstrap: str, topic: str, key: str, timeout: float = 30, count: int = 1
) -> list[ConsumerRecord]:
    """The topic's records from the start up to (and with) the `count`-th one keyed `key`."""

    async def read() -> list[ConsumerRecord]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False,
        )  # fmt: skip
        await consumer.start()
        records: list[ConsumerRecord] = []
        try:
            found = await consume_until(
                consumer,
                lambda _, record: records.append(record),
                lambda: sum(record.key == key.encode() for record in records) >= count,
                timeout,
            )
        finally:
            await consumer.stop()
        assert found, f"fewer than {count} records keyed {key} on {topic} ({len(records)} read)"
        return records

    return asyncio.run(read())


def the_record(bootstrap: str, topic: str, key: str) -> Feedback:
    [record] = [r for r in read_until(bootstrap, topic, key) if r.key == key.encode()]
    return valid_record(record.value)


def test_corals_exact_request_is_answered_once_its_record_is_on_the_feedback_topic(
    api: WorkerProcess, kafka_bootstrap: str, feedback_topic: str
) -> None:
    before = outcomes(api)
    status, body = suggest(api, coral_request(TEXT, "c-101"))
    assert status == 200, body
    # Perspective's SuggestCommentScoreResponse
    assert body == {
        "clientToken": "comment:c-101",
        "detectedLanguages": ["en"],
        "requestedLanguages": ["en"],
    }
    record = the_record(kafka_bootstrap, feedback_topic, "comment:c-101")
    assert record.id == "comment:c-101"  # the clientToken, Coral's `comment:<comment id>`
    assert record.labels == {"toxic": 1}  # TOXICITY -> toxic (api_attributes), value 1 -> 1
    assert record.text == TEXT
    assert record.tenant == "Coral:https://talk.example.com"  # communityId
    assert record.source == "suggestscore"
    assert recent(record)
    # an approval is a 0 on the same label, a later record on the same id
    assert suggest(api, coral_request(TEXT, "c-101", "APPROVED"))[0] == 200
    [first, second] = _two(kafka_bootstrap, feedback_topic, "comment:c-101")
    assert valid_record(first.value).labels == {"toxic": 1}
    assert valid_record(second.value).labels == {"toxic": 0}
    after = outcomes(api)
    assert after["stored"] == before["stored"] + 2
    assert metric_sample(
        api.get("/metrics").body, "moderation_http_requests_total",
        method="suggestscore", code="200",
    ) >= 2  # fmt: skip


def test_a_tenant_endpoint_names_the_records_tenant(
    api: WorkerProcess, kafka_bootstrap: str, feedback_topic: str
) -> None:
    """Under `/tenants/NAME/v1alpha1` the record's tenant is NAME, whatever communityId says."""
    body = coral_request(TEXT, "c-202")
    assert suggest(api, body, endpoint="/tenants/site-es/v1alpha1")[0] == 200
    assert the_record(kafka_bootstrap, feedback_topic, "comment:c-202").tenant == "site-es"


def _two(bootstrap: str, topic: str, key: str) -> list[ConsumerRecord]:
    """The first two records keyed `key` (read until the second arrives)."""
    keyed = [r for r in read_until(bootstrap, topic, key, count=2) if r.key == key.encode()]
    assert len(keyed) == 2, keyed
    return keyed


def test_do_not_store_keeps_the_text_out_and_without_a_token_the_id_is_the_texts_hash(
    api: WorkerProcess, kafka_bootstrap: str, feedback_topic: str
) -> None:
    text = "A private comment nobody may keep, but a moderator judged it."
    status, body = suggest(
        api,
        {
            "comment": {"text": text},
            "attributeScores": {
                "TOXICITY": {"summaryScore": {"value": 0.7}},
                "INSULT": {"summaryScore": {"value": 0.2, "type": "PROBABILITY"}},
            },
            "doNotStore": True,
            "sessionId": "session-1",
        },
    )
    assert status == 200, body
    assert "clientToken" not in body and "requestedLanguages" not in body
    assert body["detectedLanguages"] == ["en"]
    key = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    [raw] = [
        r.value for r in read_until(kafka_bootstrap, feedback_topic, key) if r.key == key.encode()
    ]
    assert b'"text"' not in raw and b"private comment" not in raw
    record = valid_record(raw)
    assert record.text is None and record.tenant is None
    assert record.labels == {"toxic": 1, "insult": 0}  # >= 0.5 -> 1, else 0


def test_googles_python_client_calls_suggestscore_from_the_discovery_document(
    api: WorkerProcess, kafka_bootstrap: str, feedback_topic: str
) -> None:
    from googleapiclient import discovery

    client = discovery.build(
        "commentanalyzer", "v1alpha1", developerKey="any-key",
        discoveryServiceUrl=f"{api.api_url}/$discovery/rest?version=v1alpha1",
        static_discovery=False,
    )  # fmt: skip
    response = (
        client.comments()
        .suggestscore(
            body={
                "comment": {"text": TEXT},
                "attributeScores": {"THREAT": {"summaryScore": {"value": 1}}},
                "languages": ["en-US"],
                "communityId": "forum-7",
                "clientToken": "google-client-1",
            }
        )
        .execute()
    )
    assert response == {
        "clientToken": "google-client-1",
        "detectedLanguages": ["en"],
        "requestedLanguages": ["en-US"],
    }
    record = the_record(kafka_bootstrap, feedback_topic, "google-client-1")
    assert (record.labels, record.tenant) == ({"threat": 1}, "forum-7")


@pytest.mark.parametrize(
    ("scores", "words"),
    [
        ({"FLIRTATION": {"summaryScore": {"value": 1}}}, "Unknown attribute: FLIRTATION"),
        ({}, "attribute_scores must not be empty"),
        ({"TOXICITY": {"spanScores": []}}, "needs summaryScore.value"),
        ({"TOXICITY": {"summaryScore": {"value": 2}}}, "attributeScores.TOXICITY"),
    ],
)
def test_a_bad_suggestion_is_a_400_in_googles_shape_and_writes_nothing(
    api: WorkerProcess,
    kafka_bootstrap: str,
    feedback_topic: str,
    scores: dict[str, Any],
    words: str,
) -> None:
    before = outcomes(api)
    token = f"bad-{abs(hash(words))}"
    status, body = suggest(
        api, {"comment": {"text": TEXT}, "attributeScores": scores, "clientToken": token}
    )
    assert status == 400, body
    assert body["error"]["status"] == "INVALID_ARGUMENT" and words in body["error"]["message"]
    assert outcomes(api)["invalid"] == before["invalid"] + 1
    # a good decision after it is on the topic; the bad one is not, before or after it
    good = f"good-after-{token}"
    assert suggest(api, coral_request(TEXT, good))[0] == 200
    records = read_until(kafka_bootstrap, feedback_topic, f"comment:{good}")
    assert not [r for r in records if r.key == token.encode()]


def test_a_record_the_producer_refuses_is_a_503_and_is_not_written(
    api: WorkerProcess, kafka_bootstrap: str, feedback_topic: str
) -> None:
    """A comment whose record is over the producer's largest request (1 MiB) is refused before
    it is sent: 503 in Google's shape, and the topic never holds it."""
    before = outcomes(api)
    status, body = suggest(api, coral_request("x" * OVER_PRODUCER_LIMIT, "too-big"))
    assert status == 503, body
    assert body["error"]["status"] == "UNAVAILABLE"
    assert "MessageSizeTooLargeError" in body["error"]["message"]
    assert outcomes(api)["unavailable"] == before["unavailable"] + 1
    assert outcomes(api)["stored"] == before["stored"]
    assert suggest(api, coral_request(TEXT, "after-too-big"))[0] == 200
    records = read_until(kafka_bootstrap, feedback_topic, "comment:after-too-big")
    assert not [r for r in records if r.key == b"comment:too-big"]
    assert api.alive()


def test_a_broker_that_does_not_answer_is_a_503_within_the_feedback_timeout(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A broker of this test's own, stopped (SIGSTOP) under a running worker: the decision is
    not acknowledged, and the answer is 503 after MODERATION_FEEDBACK_TIMEOUT_S, not later."""
    with TansuBroker(tmp_path / "broker.log") as broker:
        topics = fresh_topics(broker.bootstrap, "suggest-frozen")
        asyncio.run(create_topics(broker.bootstrap, {f"feedback-{topics.input}": 1}))
        worker = start_worker(
            broker.bootstrap, topics, log_path=tmp_path / "worker.log",
            overrides=QUICK_ENV | {
                "MODERATION_MODEL": str(tiny_model_dir),
                "MODERATION_HTTP_API_PORT": str(free_port()),
                "MODERATION_FEEDBACK_TOPIC": f"feedback-{topics.input}",
                "MODERATION_FEEDBACK_TIMEOUT_S": "2",
            },
        )  # fmt: skip
        try:
            assert suggest(worker, coral_request(TEXT, "before-stop"))[0] == 200
            broker.freeze()
            started = time.monotonic()
            status, body = suggest(worker, coral_request(TEXT, "while-stopped"))
            waited = time.monotonic() - started
            broker.thaw()
            assert status == 503, body
            assert body["error"] == {
                "code": 503,
                "status": "UNAVAILABLE",
                "message": "The broker did not acknowledge the decision within 2 s.",
            }
            assert 2 <= waited < 6
            assert outcomes(worker)["unavailable"] == 1
        finally:
            broker.thaw()
            worker.kill()


# ------------------------------------------------------------------------- HTTP only


def http_only_worker(model_dir: Path, tmp_path: Path, **env: str) -> WorkerProcess:
    environment = worker_env(
        CLOSED, Topics.fresh("suggest-http-only"), free_port(),
        QUICK_ENV | {
            "MODERATION_MODEL": str(model_dir),
            "MODERATION_HTTP_API_PORT": str(free_port()),
        } | env,
    )  # fmt: skip
    worker = WorkerProcess(environment, tmp_path / "worker.log", args=["--http-only"])
    try:
        worker.wait_ready(90)
    except BaseException:
        worker.kill()
        raise
    return worker


def test_http_only_appends_each_decision_to_the_feedback_file(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "decisions" / "feedback.jsonl"
    path.parent.mkdir()
    worker = http_only_worker(tiny_model_dir, tmp_path, MODERATION_FEEDBACK_FILE=str(path))
    try:
        assert path.read_bytes() == b""  # created at start
        status, body = suggest(worker, coral_request(TEXT, "f-1"))
        assert (status, body["clientToken"]) == (200, "comment:f-1")
        first = path.read_bytes()  # written before the answer
        assert first.endswith(b"\n") and first.count(b"\n") == 1
        assert suggest(worker, {"comment": {"text": TEXT}, "attributeScores": {}})[0] == 400
        request = coral_request("Thanks, this was helpful.", "f-2", "APPROVED") | {
            "doNotStore": True
        }
        assert suggest(worker, request)[0] == 200
        content = path.read_bytes()
        assert content.startswith(first)  # appended, the first line untouched
        lines = content.splitlines()
        assert len(lines) == 2  # the 400 wrote nothing
        records = [valid_record(line) for line in lines]
        assert [(r.id, r.labels, r.text) for r in records] == [
            ("comment:f-1", {"toxic": 1}, TEXT),
            ("comment:f-2", {"toxic": 0}, None),
        ]
        assert all(r.tenant == "Coral:https://talk.example.com" and recent(r) for r in records)
        assert outcomes(worker)["stored"] == 2
    finally:
        assert worker.terminate() == 0, worker.log()[-3000:]
    assert path.read_bytes().count(b"\n") == 2


def test_http_only_without_a_feedback_file_answers_501_saying_what_to_set(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    worker = http_only_worker(tiny_model_dir, tmp_path)
    try:
        status, body = suggest(worker, coral_request(TEXT, "nowhere"))
        assert status == 501, body
        assert body["error"]["status"] == "UNIMPLEMENTED"
        assert "MODERATION_FEEDBACK_FILE" in body["error"]["message"]
        assert outcomes(worker)["unconfigured"] == 1
    finally:
        assert worker.terminate() == 0
    assert "suggestscore answers 501" in worker.log()


@pytest.mark.parametrize("where", ["missing-directory", "a-directory"])
def test_http_only_refuses_a_feedback_file_it_could_not_write(tmp_path: Path, where: str) -> None:
    """One line, exit 2, before the model is loaded."""
    path = tmp_path / "nowhere" / "feedback.jsonl" if where == "missing-directory" else tmp_path
    line = refusal_line(
        {
            "MODERATION_HTTP_ONLY": "1",
            "MODERATION_HTTP_API_PORT": "0",
            "MODERATION_FEEDBACK_FILE": str(path),
        }
    )
    assert line.startswith("moderation-worker: invalid settings: feedback_file: "), line
    assert str(path) in line, line
