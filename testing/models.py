"""A tiny random BERT multi-label classifier for tests and reliability runs (no training, no
download: the tokenizer is the bundled default model's)."""

from __future__ import annotations

from pathlib import Path

import worker

LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
DEFAULT_MODEL_DIR = Path(worker.__file__).resolve().parent / "default_model"


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """A random BERT multi-label classifier (hidden 32) with the real BERT-Tiny tokenizer, saved
    with `save_pretrained` into `directory`; returns `directory`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
        problem_type="multi_label_classification",
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    config.label_thresholds = {label: 0.5 for label in LABELS}
    config.model_name = "tiny-test-bert"
    config.model_version = f"seed-{seed}"
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # spread the logits so that scores differ visibly between texts
        model.classifier.weight.mul_(50.0)
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR).save_pretrained(directory)
    return directory
