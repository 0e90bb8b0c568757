"""The JSON Schema documents generated from the models (messages and the threshold policy file),
and the files they are committed as."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from schemas.comment import Comment
from schemas.dead_letter import DeadLetterHeaders, RedriveHeaders
from schemas.feedback import Feedback
from schemas.policy import ThresholdPolicy
from schemas.scores import ScoredComment

SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "comment.schema.json": Comment,
    "scored-comment.schema.json": ScoredComment,
    "dead-letter-headers.schema.json": DeadLetterHeaders,
    "threshold-policy.schema.json": ThresholdPolicy,
    "redrive-headers.schema.json": RedriveHeaders,
    "feedback.schema.json": Feedback,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema (draft 2020-12) of each message and of the policy file."""
    out: dict[str, dict[str, Any]] = {}
    for filename, model in SCHEMA_FILES.items():
        schema = model.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = filename
        out[filename] = schema
    return out
