"""The Perspective protocol as data (worker/perspective.py) and the attribute map of the
artifact contract: sentence spans, UTF-16 offsets, request checks, thresholds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from schemas.artifact import DEFAULT_API_ATTRIBUTES, TOXICITY_LABELS, ArtifactContract
from worker.perspective import (
    MAX_SPANS,
    ApiError,
    build_response,
    is_english,
    parse_request,
    sentence_spans,
    utf16_offsets,
)

CONTRACT = ArtifactContract(
    model_name="m",
    model_version="v",
    labels=TOXICITY_LABELS,
    label_thresholds=dict.fromkeys(TOXICITY_LABELS, 0.5),
)


def test_the_contract_maps_perspective_attributes_to_labels() -> None:
    assert CONTRACT.api_attributes == DEFAULT_API_ATTRIBUTES
    assert CONTRACT.config_entries()["api_attributes"] == DEFAULT_API_ATTRIBUTES
    own = ArtifactContract.from_config(
        {
            "problem_type": "multi_label_classification",
            "id2label": {"0": "toxic", "1": "spam"},
            "api_attributes": {"TOXICITY": "toxic", "SPAM": "spam"},
        },
        default_name="n",
        default_version="v",
    )
    assert own.api_attributes == {"TOXICITY": "toxic", "SPAM": "spam"}
    partial = ArtifactContract.from_config(
        {"problem_type": "multi_label_classification", "id2label": {"0": "toxic", "1": "x"}},
        default_name="n",
        default_version="v",
    )
    assert partial.api_attributes == {"TOXICITY": "toxic"}  # defaults for the labels it has
    with pytest.raises(ValueError, match="labels the model does not have"):
        ArtifactContract(
            model_name="m", model_version="v", labels=("toxic",),
            label_thresholds={"toxic": 0.5}, api_attributes={"THREAT": "threat"},
        )  # fmt: skip


def test_sentences_are_cut_at_terminal_punctuation_and_line_breaks() -> None:
    text = 'What kind of idiot name is foo? Sorry, I like your name.\n"Quoted!" he said e.g. 3.5 x'
    pieces = [text[b:e] for b, e in sentence_spans(text)]
    assert pieces == [
        "What kind of idiot name is foo?",
        "Sorry, I like your name.",
        '"Quoted!"',
        "he said e.g.",
        "3.5 x",
    ]
    assert sentence_spans("What kind of idiot name is foo? Sorry, I like your name.") == [
        (0, 31),
        (32, 56),
    ]  # Perspective's own example
    assert sentence_spans("   ") == []
    many = " ".join(f"s{i}." for i in range(200))
    grouped = sentence_spans(many)
    assert len(grouped) <= MAX_SPANS
    assert grouped[0][0] == 0 and grouped[-1][1] == len(many)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(grouped))


def test_offsets_count_utf16_code_units() -> None:
    text = "a🎉b é😀"
    assert utf16_offsets(text, [0, 1, 2, 3, 6, 3]) == [0, 1, 3, 4, 8, 4]
    assert utf16_offsets(text, [len(text)]) == [len(text.encode("utf-16-le")) // 2]


def test_english_in_any_spelling() -> None:
    assert all(map(is_english, ["en", "EN", "en-US", "en_GB", " en "]))
    assert not any(map(is_english, ["es", "eng", "fr-CA", ""]))


def test_a_valid_request_and_the_response_with_thresholds() -> None:
    analysis = parse_request(
        {
            "comment": {"text": "hi"},
            "requestedAttributes": {
                "TOXICITY": {"scoreThreshold": 0.5},
                "THREAT": None,
                "INSULT": {"scoreThreshold": 0.1},
            },
            "clientToken": "t",
            "unknownField": 1,
        },
        CONTRACT,
        100,
    )
    assert analysis.languages == ["en"] and analysis.client_token == "t" and not analysis.spans
    row = np.array([0.4, 0.0, 0.0, 0.9, 0.2, 0.0], dtype=np.float32)
    span_low = np.array([0.1, 0.0, 0.0, 0.1, 0.05, 0.0], dtype=np.float32)
    response = build_response(analysis, TOXICITY_LABELS, row, [(0, 2, row), (3, 4, span_low)])
    scores = response["attributeScores"]
    assert set(scores) == {"THREAT", "INSULT"}  # TOXICITY 0.4 < 0.5: left out
    assert scores["THREAT"]["summaryScore"] == {"value": pytest.approx(0.9), "type": "PROBABILITY"}
    assert [s["begin"] for s in scores["INSULT"]["spanScores"]] == [0]  # 0.05 < 0.1 dropped
    assert response["clientToken"] == "t"


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        (
            {"comment": {"text": "x" * 11}, "requestedAttributes": {"TOXICITY": {}}},
            "COMMENT_TOO_LONG",
        ),
        (
            {"comment": {"text": "é" * 6}, "requestedAttributes": {"TOXICITY": {}}},
            "COMMENT_TOO_LONG",
        ),
        ({"comment": {"text": "hi"}, "requestedAttributes": {"X": {}}}, "INVALID_REQUEST"),
        ({"comment": {"text": "hi"}, "requestedAttributes": []}, "INVALID_REQUEST"),
        ({"comment": "hi", "requestedAttributes": {"TOXICITY": {}}}, "INVALID_REQUEST"),
    ],
)
def test_bad_requests_name_the_problem_never_the_text(body: object, error_type: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_request(body, CONTRACT, 10)
    error = raised.value.body()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["details"][0]["errorType"] == error_type
    assert "xxxxxxxxxx" not in error["message"] and "éé" not in error["message"]
