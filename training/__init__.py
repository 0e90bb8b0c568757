"""Training CLI for the streaming moderation worker: fit, distill, evaluate and export models."""

from schemas.artifact import TOXICITY_LABELS

JIGSAW_LABELS: list[str] = list(TOXICITY_LABELS)  # the Jigsaw columns, in the served order
DEFAULT_BASE_MODEL = "google/bert_uncased_L-2_H-128_A-2"

__all__ = ["DEFAULT_BASE_MODEL", "JIGSAW_LABELS"]
