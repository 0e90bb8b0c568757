"""Message contracts of the moderation pipeline: pure pydantic models, no I/O."""

from schemas.artifact import ArtifactContract, ArtifactError
from schemas.comment import Comment
from schemas.dead_letter import DeadLetterHeaders, ErrorKind, RedriveHeaders
from schemas.feedback import FEEDBACK_TOPIC, Feedback
from schemas.policy import MODEL_POLICY_VERSION, TenantPolicy, ThresholdPolicy
from schemas.registry import SCHEMA_FILES, json_schemas
from schemas.scores import ModelRef, ScoredComment

__all__ = [
    "FEEDBACK_TOPIC",
    "MODEL_POLICY_VERSION",
    "SCHEMA_FILES",
    "ArtifactContract",
    "ArtifactError",
    "Comment",
    "DeadLetterHeaders",
    "ErrorKind",
    "Feedback",
    "ModelRef",
    "RedriveHeaders",
    "ScoredComment",
    "TenantPolicy",
    "ThresholdPolicy",
    "json_schemas",
]
