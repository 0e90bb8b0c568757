"""The message contracts: what is accepted, what is refused, and the committed JSON Schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from schemas import (
    SCHEMA_FILES,
    Comment,
    DeadLetterHeaders,
    ErrorKind,
    ScoredComment,
    json_schemas,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def test_comment_accepts_rfc3339_and_epoch_ms_and_ignores_unknown_fields() -> None:
    rfc = Comment.model_validate({"id": "1", "text": "hi", "created_at": "2024-05-01T12:00:00Z"})
    assert rfc.created_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    epoch = Comment.model_validate({"id": "1", "text": "hi", "created_at": 1_714_564_800_000})
    assert epoch.created_at == 1_714_564_800_000
    extra = Comment.model_validate({"id": "1", "text": "hi", "lang": "en", "metadata": {"a": 1}})
    assert extra.metadata == {"a": 1} and not hasattr(extra, "lang")


@pytest.mark.parametrize(
    "payload",
    [
        {"text": "no id"},
        {"id": "", "text": "empty id"},
        {"id": "x" * 257, "text": "id too long"},
        {"id": 5, "text": "id must be a string"},
        {"id": "1"},
        {"id": "1", "text": None},
        {"id": "1", "text": 42},
        {"id": "1", "text": "t", "metadata": [1, 2]},
        {"id": "1", "text": "t", "created_at": "yesterday"},
    ],
)
def test_comment_rejects_invalid_fields(payload: dict) -> None:
    with pytest.raises(ValidationError):
        Comment.model_validate(payload)


def test_scored_comment_bounds_probabilities() -> None:
    base = {
        "id": "1", "flagged": [], "model": {"name": "m", "version": "v"}, "scored_at": 1,
    }  # fmt: skip
    ScoredComment.model_validate(base | {"scores": {"toxic": 0.0, "threat": 1.0}})
    with pytest.raises(ValidationError):
        ScoredComment.model_validate(base | {"scores": {"toxic": 1.5}})


def test_dead_letter_headers_round_trip_as_kafka_headers() -> None:
    headers = DeadLetterHeaders(
        error_kind=ErrorKind.INVALID_JSON,
        error_detail="value is not valid JSON",
        source_topic="comments",
        source_partition=2,
        source_offset=41,
    )
    wire = headers.to_kafka()
    assert dict(wire) == {
        "error.kind": b"invalid_json",
        "error.detail": b"value is not valid JSON",
        "source.topic": b"comments",
        "source.partition": b"2",
        "source.offset": b"41",
    }
    assert DeadLetterHeaders.from_kafka(wire) == headers


def test_committed_json_schemas_match_the_models() -> None:
    """Fails when a model changes without regenerating the files (`make schemas`)."""
    generated = json_schemas()
    assert set(generated) == set(SCHEMA_FILES)
    for name, schema in generated.items():
        committed = orjson.loads((SCHEMA_DIR / name).read_bytes())
        assert committed == orjson.loads(orjson.dumps(schema)), f"{name} drifted: run make schemas"


def test_the_policy_json_schema_accepts_the_documented_shape_and_refuses_mistakes() -> None:
    """The committed schema is usable without our code (e.g. to check a ConfigMap in CI)."""
    import jsonschema

    schema = orjson.loads((SCHEMA_DIR / "threshold-policy.schema.json").read_bytes())
    example = {
        "version": "2026-12-01",
        "thresholds": {"toxic": 0.8, "threat": 0.5},
        "tenants": {"kids": {"thresholds": {"toxic": 0.3}}},
    }
    jsonschema.validate(example, schema)
    for mistake in (
        {"thresholds": {"toxic": 0.8}},  # no version
        example | {"thresholds": {"toxic": 1.2}},
        example | {"tenants": {"kids": {"thresholds": {"toxic": -0.1}}}},
        example | {"tenants": {"kids": {"toxic": 0.3}}},  # not under `thresholds`
        example | {"threshold": {}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(mistake, schema)


def test_scored_comment_policy_version_defaults_to_model_for_older_outputs() -> None:
    older = {"id": "1", "scores": {"toxic": 0.1}, "flagged": [], "scored_at": 1}
    older["model"] = {"name": "m", "version": "v"}
    assert ScoredComment.model_validate(older).policy_version == "model"
    assert (
        "policy_version"
        in orjson.loads((SCHEMA_DIR / "scored-comment.schema.json").read_bytes())["properties"]
    )
