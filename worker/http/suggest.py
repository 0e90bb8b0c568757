"""Perspective's `comments:suggestscore` (v1alpha1), as data: a moderator's decision sent back
through the Perspective API becomes one `Feedback` record (schemas/feedback.py). No I/O: the
HTTP server (`worker/http/api.py`) writes the record (`worker/http/feedback_sink.py`) and answers.

- Labels: each `attributeScores[ATTR].summaryScore.value` is a decision on the label the artifact
  maps ATTR to (`api_attributes`): ≥ 0.5 is 1 (applies), below is 0. An attribute the artifact
  does not map is a 400, as Perspective answers a malformed request (`INVALID_ARGUMENT`).
- The record's id: Perspective has no comment id, so the id is the request's `clientToken`
  (Coral Talk sends `comment:<its comment id>`), else `sha256:<hex>` of the comment's text (the
  same text judged twice is one comment, whose last decision wins). `sessionId` joins the calls
  of one moderation session, not one comment: it is accepted and not used.
- `communityId` is the tenant; `doNotStore` (not in Perspective's SuggestCommentScoreRequest,
  accepted as in AnalyzeCommentRequest) leaves the text out of the record; `context` is accepted
  and not kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, ValidationError

from schemas import ArtifactContract, Feedback
from worker.http.perspective import TextEntry, _Message, comment_text, invalid, validated

SOURCE = "suggestscore"  # `Feedback.source` of these records
DECISION_THRESHOLD = 0.5  # summaryScore.value at or above it: the label applies
MAX_ID_CHARS = 256  # `Feedback.id`, `Feedback.tenant`: longer is refused (400)


class SuggestedScore(_Message):
    value: float | None = Field(default=None, ge=0.0, le=1.0)
    type: str | None = None


class SuggestedAttributeScores(_Message):
    summary_score: SuggestedScore | None = None
    span_scores: list[dict[str, Any]] | None = None


class SuggestCommentScoreRequest(_Message):
    """Perspective's fields (unknown ones are ignored), and `doNotStore`."""

    comment: TextEntry | None = None
    context: dict[str, Any] | None = None
    attribute_scores: dict[str, SuggestedAttributeScores | None] | None = None
    languages: list[str] | None = None
    community_id: str | None = None
    client_token: str | None = None
    session_id: str | None = None
    do_not_store: bool | None = None


@dataclass(frozen=True)
class Suggestion:
    """A request that passed every check: the record to write and how to answer."""

    feedback: Feedback
    text: str  # the comment (for its language), whether or not the record keeps it
    languages: list[str]  # as declared (`languages`; empty: not declared)
    client_token: str | None


def comment_id(client_token: str | None, text: str) -> str:
    """The record's id: the client's token, else a hash of the text (see the module doc)."""
    if client_token:
        return client_token
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def parse_suggestion(
    body: Any, contract: ArtifactContract, max_text_bytes: int, now: datetime | None = None
) -> Suggestion:
    """Check a decoded JSON body; raises `ApiError` (400) naming what is wrong, never quoting
    the text. `now`: the decision time (default: the current UTC time)."""
    request = validated(SuggestCommentScoreRequest, body)
    text = comment_text(request.comment, max_text_bytes)
    labels = _labels(request.attribute_scores, contract)
    for field, value in (
        ("clientToken", request.client_token),
        ("communityId", request.community_id),
    ):
        if value is not None and len(value) > MAX_ID_CHARS:
            raise invalid(f"{field} is too long ({len(value)} characters; at most {MAX_ID_CHARS}).")
    try:
        feedback = Feedback(
            id=comment_id(request.client_token, text),
            labels=labels,
            text=None if request.do_not_store else text,
            tenant=request.community_id or None,
            source=SOURCE,
            decided_at=now or datetime.now(UTC),
        )
    except ValidationError as exc:  # e.g. a text that is not valid Unicode
        where = ".".join(str(part) for part in exc.errors()[0]["loc"])
        raise invalid(f"The suggestion cannot be recorded: invalid '{where}'.") from None
    return Suggestion(
        feedback=feedback,
        text=text,
        languages=[lang for lang in request.languages or [] if lang.strip()],
        client_token=request.client_token,
    )


def _labels(
    scores: dict[str, SuggestedAttributeScores | None] | None, contract: ArtifactContract
) -> dict[str, int]:
    """attribute -> summaryScore.value becomes label -> 0|1; Perspective's 400s for an empty
    map, an unknown attribute, a missing summary score, or two values for one label."""
    if not scores:
        raise invalid("attribute_scores must not be empty.")
    labels: dict[str, int] = {}
    for name, entry in scores.items():
        label = contract.api_attributes.get(name)
        if label is None:
            served = ", ".join(sorted(contract.api_attributes)) or "none"
            raise invalid(f"Unknown attribute: {name} (served: {served})")
        summary = entry.summary_score if entry is not None else None
        if summary is None or summary.value is None:
            raise invalid(
                f"attribute_scores[{name}] needs summaryScore.value (0 or 1; spanScores are not"
                " taken here)."
            )
        if summary.type not in (None, "PROBABILITY"):
            raise invalid(f"Score type {summary.type} is not supported by attribute {name}")
        decision = 1 if summary.value >= DECISION_THRESHOLD else 0
        if labels.get(label, decision) != decision:
            raise invalid(f"Two attributes give label {label} different decisions.")
        labels[label] = decision
    return labels


def suggest_response(suggestion: Suggestion, detected: list[str]) -> dict[str, Any]:
    """Perspective's SuggestCommentScoreResponse: `detectedLanguages`, `requestedLanguages` (the
    request's `languages`, when given) and `clientToken` (echoed, when given)."""
    response: dict[str, Any] = {"detectedLanguages": detected}
    if suggestion.languages:
        response["requestedLanguages"] = suggestion.languages
    if suggestion.client_token is not None:
        response["clientToken"] = suggestion.client_token
    return response
