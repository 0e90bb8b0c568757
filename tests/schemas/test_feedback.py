"""The feedback contract: what a moderator decision must carry, and its committed JSON Schema."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from schemas import FEEDBACK_TOPIC, Feedback
from worker.config import Settings

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "feedback.schema.json"
MINIMAL = {"id": "c1", "labels": {"toxic": 1}, "source": "suggestscore", "decided_at": 1}


def test_a_partial_decision_without_text_is_a_valid_record() -> None:
    record = Feedback.model_validate(MINIMAL | {"tenant": "kids", "extra": "ignored"})
    assert record.text is None and record.labels == {"toxic": 1} and record.tenant == "kids"
    full = Feedback.model_validate(
        MINIMAL
        | {
            "text": "you idiot",
            "decided_at": "2026-12-01T12:00:00Z",
            "scores": {"toxic": 0.93},
            "model": {"name": "m", "version": "v"},
            "policy_version": "p1",
        }
    )
    assert full.decided_at == datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert full.decided_at_ms() == 1_796_126_400_000


@pytest.mark.parametrize(
    "change",
    [
        {"labels": {}},  # nothing judged
        {"labels": {"toxic": 2}},
        {"labels": {"toxic": 0.5}},
        {"labels": {"toxic": "1"}},
        {"id": ""},
        {"id": 7},
        {"source": ""},
        {"decided_at": "yesterday"},
        {"scores": {"toxic": 1.5}},
        {"text": 3},
    ],
)
def test_bad_decisions_are_refused(change: dict) -> None:
    with pytest.raises(ValidationError):
        Feedback.model_validate(MINIMAL | change)
    for key in ("id", "labels", "source", "decided_at"):
        with pytest.raises(ValidationError):
            Feedback.model_validate({k: v for k, v in MINIMAL.items() if k != key})


def test_the_committed_schema_validates_records_without_our_code() -> None:
    import jsonschema

    schema = orjson.loads(SCHEMA.read_bytes())
    jsonschema.validate(MINIMAL | {"text": "t", "tenant": "a", "scores": {"toxic": 0.2}}, schema)
    for mistake in (MINIMAL | {"labels": {}}, MINIMAL | {"labels": {"toxic": 3}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(mistake, schema)


def test_the_feedback_settings_default_to_the_topic_and_no_file() -> None:
    settings = Settings()
    assert settings.feedback_topic == FEEDBACK_TOPIC == "comment-feedback"
    assert settings.feedback_file is None
