"""A tiny random BERT multi-label classifier for tests and reliability runs (no training, no
download: the tokenizer is the bundled default model's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import worker
from schemas.artifact import TOXICITY_LABELS

if TYPE_CHECKING:
    import numpy as np
    from transformers import BertForSequenceClassification

    from worker.backends.backend import TokenBatch

LABELS = list(TOXICITY_LABELS)
# comments of every length class, scripts and emptiness, for scoring tests
SAMPLE_TEXTS = [
    "ok",
    "You are a complete idiot and everybody here knows it, go away now.",
    "a much longer comment about the history of the river " * 30,
    "Ünïcödé 🎉",
    "",
    "Hello, WORLD!!! ça va? 日本語のテキスト",
    " \t\n ",
    "medium length comment, nothing special in it at all",
    "short one",
]
DEFAULT_MODEL_DIR = Path(worker.__file__).resolve().parent / "default_model"


def tiny_bert(
    seed: int = 0, vocab_size: int = 30522, max_position_embeddings: int = 512
) -> BertForSequenceClassification:
    """A random BERT multi-label classifier over the toxicity labels (hidden 32, 2 layers), its
    logits spread so that scores differ visibly between texts; in eval mode."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=max_position_embeddings,
        problem_type="multi_label_classification",
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
    return model.eval()


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """`tiny_bert(seed)` as a model directory the worker serves: thresholds 0.5, a name and
    version, the real BERT-Tiny tokenizer; saved with `save_pretrained` into `directory`, which
    it returns."""
    from transformers import AutoTokenizer

    model = tiny_bert(seed)
    model.config.label_thresholds = {label: 0.5 for label in LABELS}
    model.config.model_name = "tiny-test-bert"
    model.config.model_version = f"seed-{seed}"
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR).save_pretrained(directory)
    return directory


def eager_probabilities(model: BertForSequenceClassification, batch: TokenBatch) -> np.ndarray:
    """The sigmoid of `model`'s logits on `batch`, eager torch on the model's own device: the
    reference a backend (ONNX Runtime, CUDA graphs) must reproduce."""
    import torch

    with torch.inference_mode():
        logits = model(
            input_ids=torch.from_numpy(batch.input_ids),
            attention_mask=torch.from_numpy(batch.attention_mask),
            token_type_ids=torch.from_numpy(batch.token_type_ids),
        ).logits
    return torch.sigmoid(logits).numpy()
