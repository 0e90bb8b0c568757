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
