"""`make demo` keeps the threat sample the bundled model misses, and says so and why, from what
the model card records; the card's limitations are the generator's."""

from __future__ import annotations

import json
from types import SimpleNamespace

import orjson

from schemas.artifact import read_contract
from scripts.demo import EXPECTED, MODEL_DIR, SAMPLES, misses
from training.model_card import limitations_section, model_card
from worker.backends.model import load_served_model


def test_the_demo_names_the_threat_it_misses_and_why() -> None:
    model = load_served_model(None, device="cpu", precision="fp32")
    records = []
    for i, row in enumerate(model.score(SAMPLES)):
        scores = dict(zip(model.contract.labels, map(float, row), strict=True))
        message = {"id": f"s{i}", "scores": scores, "flagged": model.contract.flagged(row)}
        records.append(SimpleNamespace(value=orjson.dumps(message)))
    lines = misses(records)
    assert len(lines) == 1, f"update the demo's expectations and the card: {lines}"
    threat = EXPECTED[8][0]
    assert lines[0].startswith(f"missed: {threat!r} is a threat, but scores 0.0")
    threshold = model.contract.label_thresholds["threat"]
    assert f"(threshold {threshold:.3f})" in lines[0]
    # why, as the model card records it: the label's share of the training rows, the known miss
    info = json.loads((MODEL_DIR / "training_info.json").read_text())
    assert f" {info['label_positive_rates']['threat']:.1%} " in lines[0]
    [miss] = info["known_misses"]
    assert miss["text"] == threat and miss["why"] in lines[0] and "Limitations" in lines[0]


def test_the_committed_card_has_the_generated_limitations() -> None:
    info = json.loads((MODEL_DIR / "training_info.json").read_text())
    contract = read_contract(MODEL_DIR)
    section = "\n".join(limitations_section(info, contract))
    card = (MODEL_DIR / "README.md").read_text()
    assert section.strip() and section in card
    [miss] = info["known_misses"]  # the recorded score is the committed model's
    assert f'"{miss["text"]}"' in section and miss["why"] in section
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert section in model_card(info, contract, config)
    served = load_served_model(None, device="cpu", precision="fp32")
    score = served.score([miss["text"]])[0][list(contract.labels).index("threat")]
    assert abs(score - miss["score"]) < 2e-3 and score < contract.label_thresholds["threat"]
