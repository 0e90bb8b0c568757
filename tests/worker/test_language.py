"""Language identification (worker/pipeline/language.py) on real texts, with the model the worker
ships."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from schemas import UnsupportedLanguage
from worker.metrics import Metrics
from worker.pipeline.language import (
    MAX_CHARS,
    METRIC_LANGUAGES,
    UNDETERMINED,
    Detection,
    LanguageDetector,
    LanguageModelError,
    is_served,
    metric_label,
    served_language,
)

TEXTS = {
    "fr": "Va te faire foutre, espèce de connard, personne ne lit tes conneries",
    "es": "Eres un idiota y no sabes nada de este tema, cállate ya",
    "de": "Du bist ein Vollidiot und hast keine Ahnung, wovon du redest",
    "pt": "Você é um idiota e não sabe nada sobre este assunto",
    "en": "u r such a dumbass lol!!! go f urself and stop editing my page",
}


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


@pytest.mark.parametrize("code", sorted(TEXTS))
def test_coral_languages_are_detected_reliably(detector: LanguageDetector, code: str) -> None:
    detection = detector.detect(TEXTS[code])
    assert detection.code == code
    assert detection.reliable
    assert served_language(detection, ["en"]) == code


def test_messy_multiline_english_comment_is_english(detector: LanguageDetector) -> None:
    text = (
        'Y U REMUV MY POST?\n\nseriously dude,  its not vandalism. (talk) 21:51, 11 Jan 2016 (UTC)"'
    )
    detection = detector.detect(text)
    assert served_language(detection, ["en"]) == "en"


@pytest.mark.parametrize("text", ["lol", "Merci", "ok"])
def test_short_text_is_unreliable_and_served_as_the_served_language(
    detector: LanguageDetector, text: str
) -> None:
    detection = detector.detect(text)
    assert not detection.reliable
    assert served_language(detection, ["en"]) == "en"


@pytest.mark.parametrize("text", ["", "   \n", ":) 12345 !!!"])
def test_text_without_letters_is_undetermined(detector: LanguageDetector, text: str) -> None:
    assert detector.detect(text) == Detection(UNDETERMINED, 0.0, False)


def test_detect_is_thread_safe(detector: LanguageDetector) -> None:
    texts = list(TEXTS.values()) * 200
    expected = [detector.detect(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(detector.detect, texts)) == expected


def test_a_broken_model_file_refuses_to_load(tmp_path: Path) -> None:
    broken = tmp_path / "lid.176.ftz"
    broken.write_bytes(b"not a fasttext model")
    with pytest.raises(LanguageModelError, match="cannot load language model"):
        LanguageDetector(broken)


def test_only_the_first_max_chars_are_read(detector: LanguageDetector) -> None:
    french = TEXTS["fr"] + " " + TEXTS["fr"] + " " + TEXTS["fr"]
    assert len(french) >= MAX_CHARS
    detection = detector.detect(french + " " + TEXTS["en"] * 40)
    assert (detection.code, detection.reliable) == ("fr", True)


def test_served_languages_match_tags_by_their_primary_subtag() -> None:
    assert all(is_served(tag, ("en",)) for tag in ["en", "EN", "en-US", "en_GB", " en "])
    assert not any(is_served(tag, ("en",)) for tag in ["es", "eng", "fr-CA", ""])
    assert is_served("pt-BR", ("en", "pt"))


def test_metric_labels_stay_a_bounded_set() -> None:
    assert metric_label("fr") == "fr"
    assert metric_label("pt-BR") == "pt"
    assert metric_label(UNDETERMINED) == UNDETERMINED
    assert {metric_label(code) for code in ["ceb", "als", "xx", "zu", "qq"]} == {"other"}
    assert metric_label("ceb", served_languages=("en", "ceb")) == "ceb"


def test_language_metrics_are_bounded_and_exported_at_zero() -> None:
    metrics = Metrics()
    metrics.init_language_labels(("en", "ceb"))
    count = "moderation_comments_by_language_total"
    get = metrics.registry.get_sample_value
    assert get(count, {"front_door": "http", "language": "fr"}) == 0
    assert get(count, {"front_door": "kafka", "language": "ceb"}) == 0  # a served language
    for code in ["zu", "xx-YY", "qq"]:
        metrics.count_language("kafka", code, ("en",))
    metrics.count_language("http", "pt-BR", ("en",), count=3)
    assert get(count, {"front_door": "kafka", "language": "other"}) == 3
    assert get(count, {"front_door": "http", "language": "pt"}) == 3
    labels = {s.labels["language"] for f in metrics.registry.collect() for s in f.samples
              if f.name == "moderation_comments_by_language"}  # fmt: skip
    assert "zu" not in labels and len(labels) == len(METRIC_LANGUAGES) + 2  # + ceb, other
    metrics.count_unsupported("kafka", UnsupportedLanguage.HOLD)
    assert (
        get("moderation_unsupported_language_total", {"front_door": "kafka", "mode": "hold"}) == 1
    )
    with pytest.raises(ValueError, match="front door"):
        metrics.count_language("grpc", "en")
    with pytest.raises(ValueError, match="mode"):
        metrics.count_unsupported("http", "drop")
