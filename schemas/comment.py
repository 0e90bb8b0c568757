"""The input message: one user comment to score."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class Comment(BaseModel):
    """A comment produced upstream to the input topic (JSON object; unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Annotated[StrictStr, Field(min_length=1, max_length=256, description="Comment id.")]
    text: Annotated[StrictStr, Field(description="The comment text to score.")]
    created_at: Annotated[
        datetime | StrictInt | None,
        Field(description="RFC 3339 timestamp or epoch milliseconds."),
    ] = None
    metadata: Annotated[
        dict[str, Any] | None,
        Field(description="Opaque object passed through to the output."),
    ] = None
