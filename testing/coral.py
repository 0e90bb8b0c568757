"""Coral Talk's requests to Perspective, as coralproject/talk sends them
(server/src/core/server/services/perspective/perspective.ts, `formatBody`): shared by the
suggestscore tests and `make feedback-demo`."""

from __future__ import annotations

import json
from typing import Any

CORAL_COMMUNITY = "Coral:https://talk.example.com"  # Coral's communityId: "Coral:" + its URL


def coral_request(
    text: str, comment_id: str, status: str = "DELETED", community: str = CORAL_COMMUNITY
) -> dict[str, Any]:
    """The body Coral posts to `{endpoint}/comments:suggestscore` when a moderator approves (0)
    or rejects (1) a top-level comment (a reply adds `reply_to_id_Coral_comment_id` to the
    context's JSON text)."""
    return {
        "comment": {"text": text},
        "context": {
            "entries": [
                {
                    "text": json.dumps(
                        {
                            "url": f"https://news.example.com/story-1?commentID={comment_id}",
                            "Coral_comment_id": comment_id,
                        }
                    )
                }
            ]
        },
        "attributeScores": {
            "TOXICITY": {"summaryScore": {"value": 0 if status == "APPROVED" else 1}}
        },
        "languages": ["en"],
        "communityId": community,
        "clientToken": f"comment:{comment_id}",
    }
