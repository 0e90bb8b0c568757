"""The feedback message: a moderator's decision on one comment, sent back to the worker.

Written to the feedback topic (`MODERATION_FEEDBACK_TOPIC`, default `comment-feedback`, keyed by
the comment id) or, where the worker serves HTTP without Kafka, appended as one JSON object per
line to `MODERATION_FEEDBACK_FILE`. `moderation-train feedback-export` reads either back into a
Jigsaw-format CSV (the last decision on each label of a comment wins), which `calibrate`,
`thresholds` and `fit` take.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from schemas.scores import ModelRef, Probability

FEEDBACK_TOPIC = "comment-feedback"  # MODERATION_FEEDBACK_TOPIC's default

LabelName = Annotated[str, Field(min_length=1, max_length=128)]


class Feedback(BaseModel):
    """A moderator's decision on one comment: which labels apply (1) or not (0).

    Partial: a moderator often judges one thing (`{"toxic": 1}`); labels not named were not
    judged. Unknown fields are ignored (a newer producer can add some).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Annotated[
        StrictStr,
        Field(min_length=1, max_length=256, description="The id of the comment decided on."),
    ]
    labels: Annotated[
        dict[LabelName, Literal[0, 1]],
        Field(
            min_length=1,
            description="Label -> 1 (applies) or 0 (does not); labels not named were not judged.",
        ),
    ]
    text: Annotated[
        StrictStr | None,
        Field(
            description="The comment text; absent when the source asked not to store it "
            "(Perspective `doNotStore`)."
        ),
    ] = None
    tenant: Annotated[
        StrictStr | None,
        Field(min_length=1, max_length=256, description="The community the decision is from."),
    ] = None
    source: Annotated[
        StrictStr,
        Field(
            min_length=1,
            max_length=256,
            description="Who sent it, e.g. `suggestscore` or a moderation tool's name.",
        ),
    ]
    decided_at: Annotated[
        datetime | StrictInt,
        Field(description="When the decision was made: RFC 3339 timestamp or epoch milliseconds."),
    ]
    scores: Annotated[
        dict[LabelName, Probability] | None,
        Field(description="The scores the worker published for the comment, if known."),
    ] = None
    model: Annotated[
        ModelRef | None, Field(description="The model that produced `scores`, if known.")
    ] = None
    policy_version: Annotated[
        StrictStr | None,
        Field(min_length=1, description="The policy version the published flags followed."),
    ] = None

    def decided_at_ms(self) -> int:
        """`decided_at` as epoch milliseconds (a timestamp without a zone is read as UTC)."""
        return to_epoch_ms(self.decided_at)


def to_epoch_ms(value: datetime | int) -> int:
    """Epoch milliseconds of an RFC 3339 timestamp (naive: UTC) or of epoch milliseconds."""
    if isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)
