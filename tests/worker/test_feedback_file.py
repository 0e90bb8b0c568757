"""suggestscore's parts without a server: a request becoming a `Feedback` record
(`worker/http/suggest.py`) and the JSON-lines file it is appended to
(`worker/http/feedback_sink.py`), on a real file whose size limit refuses a write half-way."""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas import ArtifactContract, Feedback
from schemas.artifact import read_contract
from testing.models import build_tiny_model
from worker.http.feedback_sink import FeedbackUnavailable, FileFeedback, encode
from worker.http.perspective import ApiError
from worker.http.suggest import parse_suggestion, suggest_response

NOW = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> ArtifactContract:
    return read_contract(build_tiny_model(tmp_path_factory.mktemp("tiny")))


def body(**fields: Any) -> dict[str, Any]:
    return {
        "comment": {"text": "you idiot"},
        "attributeScores": {"TOXICITY": {"summaryScore": {"value": 1}}},
    } | fields


@pytest.mark.parametrize(("value", "decision"), [(0.5, 1), (0.4999, 0), (1, 1), (0, 0)])
def test_a_summary_score_at_or_above_one_half_is_a_1(
    contract: ArtifactContract, value: float, decision: int
) -> None:
    scores = {"INSULT": {"summaryScore": {"value": value}}}
    suggestion = parse_suggestion(body(attributeScores=scores), contract, 1000, NOW)
    assert suggestion.feedback.labels == {"insult": decision}
    assert suggestion.feedback.decided_at == NOW


def test_the_id_is_the_client_token_else_the_texts_hash(contract: ArtifactContract) -> None:
    with_token = parse_suggestion(body(clientToken="comment:7"), contract, 1000, NOW)
    assert with_token.feedback.id == "comment:7"
    without = parse_suggestion(body(sessionId="s"), contract, 1000, NOW)
    assert without.feedback.id == "sha256:" + hashlib.sha256(b"you idiot").hexdigest()
    assert suggest_response(without, ["en"]) == {"detectedLanguages": ["en"]}
    assert suggest_response(
        parse_suggestion(body(clientToken="t", languages=["de", " "]), contract, 1000, NOW), ["en"]
    ) == {"detectedLanguages": ["en"], "requestedLanguages": ["de"], "clientToken": "t"}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"comment": {"text": ""}}, "Comment must be non-empty"),
        ({"comment": {"text": "x" * 1001}}, "COMMENT_TOO_LONG"),
        ({"comment": {"text": "<b>x</b>", "type": "HTML"}}, "only 'PLAIN_TEXT'"),
        ({"clientToken": "t" * 257}, "clientToken is too long"),
        ({"communityId": "c" * 257}, "communityId is too long"),
        ({"attributeScores": {"TOXICITY": None}}, "needs summaryScore.value"),
        ({"attributeScores": {"TOXICITY": {"summaryScore": {}}}}, "needs summaryScore.value"),
        (
            {"attributeScores": {"TOXICITY": {"summaryScore": {"value": 1, "type": "STD_DEV"}}}},
            "Score type STD_DEV",
        ),
        ({"attributeScores": ["TOXICITY"]}, "Invalid value at 'attributeScores'"),
    ],
)
def test_bad_suggestions_are_400s_naming_the_field_never_the_text(
    contract: ArtifactContract, change: dict[str, Any], words: str
) -> None:
    with pytest.raises(ApiError) as refused:
        parse_suggestion(body(**change), contract, 1000, NOW)
    error = refused.value.body()["error"]
    assert error["code"] == 400 and words in str(error)
    assert "idiot" not in str(error)


def record(i: int, text: str = "a decision") -> Feedback:
    return Feedback(id=f"c-{i}", labels={"toxic": i % 2}, text=text, source="t", decided_at=NOW)


@pytest.fixture
def file_size_limit() -> Iterator[Any]:
    """`limit(n)`: this process may not grow a file beyond n bytes (writes past it are short,
    then EFBIG, as on a full quota); restored after the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def test_a_write_refused_half_way_leaves_no_half_line(tmp_path: Path, file_size_limit: Any) -> None:
    path = tmp_path / "feedback.jsonl"

    async def run() -> None:
        sink = FileFeedback(path, timeout_s=5, max_record_bytes=10_000)
        await sink.start()
        try:
            await sink.write(record(1))
            whole = path.stat().st_size
            file_size_limit(whole + 20)  # room for 20 bytes of the next line, not all of it
            with pytest.raises(FeedbackUnavailable, match="could not be written"):
                await sink.write(record(2, "a longer decision that does not fit"))
            assert path.stat().st_size == whole  # cut back to where the line began
            file_size_limit(resource.RLIM_INFINITY)
            await sink.write(record(3))
        finally:
            await sink.stop()

    asyncio.run(run())
    lines = path.read_bytes().splitlines()
    assert lines == [encode(record(1)), encode(record(3))]
    assert [Feedback.model_validate_json(line).id for line in lines] == ["c-1", "c-3"]


def test_a_record_over_the_bound_is_refused_before_any_write(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"

    async def run() -> None:
        sink = FileFeedback(path, timeout_s=5, max_record_bytes=200)
        await sink.start()
        try:
            with pytest.raises(FeedbackUnavailable, match="over 200"):
                await sink.write(record(1, "x" * 300))
        finally:
            await sink.stop()

    asyncio.run(run())
    assert path.read_bytes() == b""


def test_a_fifo_is_not_taken_for_the_file(tmp_path: Path) -> None:
    """Refused at start (the worker does not start), and opening it does not hang."""
    fifo = tmp_path / "feedback.jsonl"
    os.mkfifo(fifo)

    async def run() -> None:
        sink = FileFeedback(fifo, timeout_s=5, max_record_bytes=200)
        with pytest.raises(OSError, match="MODERATION_FEEDBACK_FILE"):
            await sink.start()
        await sink.stop()

    asyncio.run(run())
