"""Known misses: comments a reader expects flagged, checked whenever the default model is
built; those the model does not flag are recorded (`known_misses` in its training info) for the
card's limitations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.artifact import CONFIG_FILE, read_contract
from training.artifact_files import CARD_FILE, INFO_FILE
from training.model_card import model_card

# `make demo` shows the first.
KNOWN_MISS_CHECKS = (
    (
        "I will find where you live and make you regret this.",
        "threat",
        "It is an indirect threat with no violent word in it, and most threat rows of the "
        "training data name the violence (kill, die, shoot, ...).",
    ),
)


def known_misses(model_dir: Path) -> list[dict[str, Any]]:
    """The `KNOWN_MISS_CHECKS` the model in `model_dir` does not flag, with score and threshold."""
    from training.modeling import load_classifier, load_tokenizer, predict

    contract = read_contract(model_dir)
    texts = [text for text, _, _ in KNOWN_MISS_CHECKS]
    probs, _ = predict(load_classifier(model_dir), load_tokenizer(model_dir), texts)
    misses = []
    for row, (text, label, why) in zip(probs, KNOWN_MISS_CHECKS, strict=True):
        score = float(row[contract.labels.index(label)])
        threshold = contract.label_thresholds[label]
        if score < threshold:
            misses.append(
                {"text": text, "label": label, "score": round(score, 4),
                 "threshold": round(threshold, 4), "why": why}
            )  # fmt: skip
    return misses


def record_known_misses(artifact: Path) -> None:
    """Check `KNOWN_MISS_CHECKS` on the exported artifact (its calibrated scores and
    thresholds); record them in its training info and card."""
    info_file = artifact / INFO_FILE
    info = json.loads(info_file.read_text())
    info["known_misses"] = known_misses(artifact)
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    config = json.loads((artifact / CONFIG_FILE).read_text())
    (artifact / CARD_FILE).write_text(model_card(info, read_contract(artifact), config))
