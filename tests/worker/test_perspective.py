"""The Perspective protocol as data (worker/http/perspective.py) and the attribute map of the
artifact contract: sentence spans, UTF-16 offsets, request checks, thresholds."""

from __future__ import annotations

import itertools
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import UnsupportedLanguage
from schemas.artifact import DEFAULT_API_ATTRIBUTES, TOXICITY_LABELS, ArtifactContract
from worker.http.perspective import (
    MAX_SPANS,
    ApiError,
    build_response,
    judge_language,
    language_refusal,
    parse_request,
    sentence_spans,
    split_sentences,
    utf16_offsets,
)
from worker.pipeline.language import Detection, is_served

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


# The splitter as it was (a lookahead after the punctuation run, issue 22): the reference for
# what a sentence is, on short texts, where its backtracking costs nothing.
_LOOKAHEAD_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)|[\r\n]+")


def reference_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _LOOKAHEAD_END.finditer(text):
        piece = text[start : match.end()]
        if piece.strip():
            begin = start + len(piece) - len(piece.lstrip())
            spans.append((begin, begin + len(piece.strip())))
        start = match.end()
    piece = text[start:]
    if piece.strip():
        begin = start + len(piece) - len(piece.lstrip())
        spans.append((begin, begin + len(piece.strip())))
    return spans


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=".!?\"'\u201d\u2019)]\r\n \t\u00a0\u2003ab\U0001f389", max_size=24))
def test_the_linear_splitter_cuts_where_the_lookahead_did(text: str) -> None:
    assert sentence_spans(text, max_spans=1000) == reference_spans(text)


def _seconds(text: str) -> float:
    """The fastest of five splits (the least disturbed by anything else on the machine)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        split_sentences(text)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("mark", [".", "!", "?", ".!?"])
def test_splitting_is_linear_in_runs_of_punctuation(mark: str) -> None:
    """A run of punctuation not followed by whitespace once backtracked quadratically: 20,479
    dots and an x took 12 s on the event loop (issue 22). Ten times the text may take about ten
    times as long, never the hundred times a quadratic splitter takes."""
    small = mark * (1_000 // len(mark)) + "x"
    large = mark * (10_000 // len(mark)) + "x"
    ratio = _seconds(large) / max(_seconds(small), 1e-6)
    assert ratio < 25, f"10x the text took {ratio:.0f}x the time"
    issue = "." * 20_479 + "x"  # the request of issue 22: one sentence
    assert _seconds(issue) < 0.5
    assert split_sentences(issue).spans == [(0, 20_480)] and split_sentences(issue).texts == []


def test_split_sentences_gives_texts_and_utf16_spans() -> None:
    text = "Party 🎉 time! You idiot.  Bye"
    sentences = split_sentences(text)
    assert sentences.texts == ["Party 🎉 time!", "You idiot.", "Bye"]
    assert sentences.spans == [(0, 14), (15, 25), (27, 30)]
    assert split_sentences("  one sentence 🎉 ").spans == [(2, 17)]
    assert split_sentences("  one sentence 🎉 ").texts == []
    assert split_sentences("   ") == type(sentences)([], [(0, 3)])


def test_offsets_count_utf16_code_units() -> None:
    text = "a🎉b é😀"
    assert utf16_offsets(text, [0, 1, 2, 3, 6, 3]) == [0, 1, 3, 4, 8, 4]
    assert utf16_offsets(text, [len(text)]) == [len(text.encode("utf-16-le")) // 2]


def test_english_in_any_spelling() -> None:
    """A request's `languages` match the served ones by primary subtag (`is_served`)."""
    assert all(is_served(tag, ("en",)) for tag in ["en", "EN", "en-US", "en_GB", " en "])
    assert not any(is_served(tag, ("en",)) for tag in ["es", "eng", "fr-CA", ""])


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
    assert analysis.languages == [] and analysis.client_token == "t" and not analysis.spans
    row = np.array([0.4, 0.0, 0.0, 0.9, 0.2, 0.0], dtype=np.float32)
    span_low = np.array([0.1, 0.0, 0.0, 0.1, 0.05, 0.0], dtype=np.float32)
    verdict = judge_language([], None, ("en",), UnsupportedLanguage.REFUSE)
    response = build_response(
        analysis, TOXICITY_LABELS, row, [(0, 2, row), (3, 4, span_low)], verdict
    )
    assert (response["languages"], response["detectedLanguages"]) == (["en"], ["en"])
    assert "unsupportedLanguage" not in response
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


# ------------------------------------------------------------------------------- languages

SERVED = ("en",)
FRENCH = Detection("fr", 0.98, True)
UNSURE_ITALIAN = Detection("it", 0.4, False)
REFUSE, SCORE, HOLD = (
    UnsupportedLanguage.REFUSE,
    UnsupportedLanguage.SCORE,
    UnsupportedLanguage.HOLD,
)


def test_declared_languages_win_over_the_detection() -> None:
    spanish = judge_language(["es"], Detection("en", 0.99, True), SERVED, REFUSE)
    assert (spanish.languages, spanish.detected, spanish.unsupported) == (["es"], ["en"], ["es"])
    assert spanish.refused
    english = judge_language(["en-GB"], FRENCH, SERVED, REFUSE)  # declared English: scored
    assert (english.languages, english.detected, english.mode) == (["en-GB"], ["fr"], None)
    assert not english.refused


def test_undeclared_a_reliable_detection_decides_an_unsure_one_does_not() -> None:
    french = judge_language([], FRENCH, SERVED, SCORE)
    assert (french.languages, french.detected, french.unsupported) == (["fr"], ["fr"], ["fr"])
    assert french.mode is SCORE and not french.refused
    unsure = judge_language([], UNSURE_ITALIAN, SERVED, REFUSE)
    assert (unsure.languages, unsure.detected, unsure.mode) == (["en"], ["it"], None)


def test_detection_off_checks_declared_languages_only() -> None:
    off = judge_language([], None, SERVED, REFUSE)
    assert (off.languages, off.detected, off.mode) == (["en"], ["en"], None)
    declared = judge_language(["de"], None, SERVED, HOLD)
    assert (declared.detected, declared.unsupported, declared.mode) == (["en"], ["de"], HOLD)


def test_the_refusal_is_perspectives_shape() -> None:
    verdict = judge_language([], FRENCH, SERVED, REFUSE)
    error = language_refusal(verdict, "TOXICITY").body()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"] == "Attribute TOXICITY does not support request languages: fr"
    assert error["details"] == [
        {
            "@type": "type.googleapis.com/google.commentanalyzer.v1alpha1.Error",
            "errorType": "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE",
            "languageNotSupportedByAttributeError": {
                "detectedLanguages": ["fr"],
                "attribute": "TOXICITY",
            },
        }
    ]


@pytest.mark.parametrize("mode", [SCORE, HOLD])
def test_a_scored_unsupported_language_is_marked(mode: UnsupportedLanguage) -> None:
    analysis = parse_request(
        {"comment": {"text": "hi"}, "requestedAttributes": {"TOXICITY": {}}, "communityId": "t1"},
        CONTRACT,
        100,
    )
    assert analysis.tenant == "t1"
    row = np.array([0.7, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
    verdict = judge_language(analysis.languages, FRENCH, SERVED, mode)
    response = build_response(analysis, TOXICITY_LABELS, row, None, verdict)
    assert response["attributeScores"]["TOXICITY"]["summaryScore"]["value"] == pytest.approx(0.7)
    assert (response["languages"], response["detectedLanguages"]) == (["fr"], ["fr"])
    assert response["unsupportedLanguage"] == {
        "mode": mode.value,
        "languages": ["fr"],
        "servedLanguages": ["en"],
    }


def test_drop_unsupported_attributes_leaves_them_out() -> None:
    body = {
        "comment": {"text": "hi"},
        "requestedAttributes": {"TOXICITY": {}, "SEXUALLY_EXPLICIT": {}, "FLIRTATION": {}},
    }
    with pytest.raises(ApiError):
        parse_request(body, CONTRACT, 100)
    with pytest.raises(ApiError):
        parse_request(body | {"dropUnsupportedAttributes": False}, CONTRACT, 100)
    analysis = parse_request(body | {"dropUnsupportedAttributes": True}, CONTRACT, 100)
    assert list(analysis.attributes) == ["TOXICITY"]
    assert analysis.dropped == ("SEXUALLY_EXPLICIT", "FLIRTATION")
