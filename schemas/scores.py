"""The output message: per-label scores of one comment."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.policy import MODEL_POLICY_VERSION


class ModelRef(BaseModel):
    """Which model produced the scores."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class CommentLanguage(BaseModel):
    """The comment's language as the worker identified it (with language detection on)."""

    model_config = ConfigDict(frozen=True)

    code: Annotated[
        str,
        Field(
            min_length=1,
            max_length=16,
            description="The language acted on: the detected ISO 639-1 code (639-3 where there "
            "is none) when `reliable`, else the model's main served language.",
        ),
    ]
    confidence: Annotated[
        float,
        Field(
            ge=0.0,
            le=1.0,
            description="The detector's confidence in its best guess (which is `code` only when "
            "`reliable`).",
        ),
    ]
    reliable: Annotated[
        bool,
        Field(
            description="false: the detection was unsure (short or messy text, or no letters) "
            "and `code` is the model's main served language."
        ),
    ]
    supported: Annotated[
        bool,
        Field(
            description="Whether the model serves `code` (its `served_languages`). false: the "
            "scores are less reliable; under the tenant's `unsupported_language` mode `hold`, "
            "`flagged` is empty and the flags are in `held`."
        ),
    ]


class ScoredComment(BaseModel):
    """Scores of one comment, published with the same Kafka key as its input."""

    model_config = ConfigDict(frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=256)]
    scores: Annotated[
        dict[str, Probability], Field(description="Sigmoid probability of every model label.")
    ]
    flagged: Annotated[
        list[str],
        Field(
            description="Labels whose score is at or above their threshold (the policy's for "
            "the comment's tenant; else the model's)."
        ),
    ]
    model: ModelRef
    policy_version: Annotated[
        str,
        Field(
            min_length=1,
            description="Version of the threshold policy `flagged` follows; `model` when the "
            "thresholds are the model's own (no policy file). Written on every output; outputs "
            "from before policies existed read as `model`, which is what they followed.",
        ),
    ] = MODEL_POLICY_VERSION
    scored_at: Annotated[int, Field(description="Epoch milliseconds when the score was made.")]
    metadata: dict[str, Any] | None = None
    language: Annotated[
        CommentLanguage | None,
        Field(description="The comment's language; absent when language detection is off."),
    ] = None
    held: Annotated[
        list[str] | None,
        Field(
            description="Only when the comment's language is not served and the tenant's "
            "`unsupported_language` mode is `hold`: the labels `flagged` would have had (possibly "
            "none); `flagged` is then empty, so that a consumer routes the comment to review "
            "instead of acting on it."
        ),
    ] = None
