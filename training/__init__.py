"""Training CLI for the streaming moderation worker: fit, distill, evaluate and export models."""

JIGSAW_LABELS: list[str] = [
    "toxic",
    "severe_toxic",
    "obscene",
    "threat",
    "insult",
    "identity_hate",
]
DEFAULT_BASE_MODEL = "google/bert_uncased_L-2_H-128_A-2"

__all__ = ["DEFAULT_BASE_MODEL", "JIGSAW_LABELS"]
