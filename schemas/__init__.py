"""Message contracts of the moderation pipeline: pure pydantic models, no I/O."""

from schemas.artifact import ArtifactContract, ArtifactError
from schemas.comment import Comment
from schemas.dead_letter import DeadLetterHeaders, ErrorKind, RedriveHeaders
from schemas.feedback import FEEDBACK_TOPIC, Feedback
from schemas.policy import (
    HTTP_DEFAULT_UNSUPPORTED_LANGUAGE,
    KAFKA_DEFAULT_UNSUPPORTED_LANGUAGE,
    MODEL_POLICY_VERSION,
    TenantPolicy,
    ThresholdPolicy,
    UnsupportedLanguage,
)
from schemas.registry import SCHEMA_FILES, json_schemas
from schemas.scores import CommentLanguage, ModelRef, ScoredComment

__all__ = [
    "FEEDBACK_TOPIC",
    "HTTP_DEFAULT_UNSUPPORTED_LANGUAGE",
    "KAFKA_DEFAULT_UNSUPPORTED_LANGUAGE",
    "MODEL_POLICY_VERSION",
    "SCHEMA_FILES",
    "ArtifactContract",
    "ArtifactError",
    "Comment",
    "CommentLanguage",
    "DeadLetterHeaders",
    "ErrorKind",
    "Feedback",
    "ModelRef",
    "RedriveHeaders",
    "ScoredComment",
    "TenantPolicy",
    "ThresholdPolicy",
    "UnsupportedLanguage",
    "json_schemas",
]
