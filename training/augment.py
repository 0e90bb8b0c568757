"""Text augmentations that enlarge the distillation transfer set (labels come from the teacher)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?\n])\s+")


def _words(text: str) -> list[str]:
    return text.split()


def token_dropout(text: str, rng: np.random.Generator, p: float = 0.15) -> str:
    """Drop each whitespace token with probability `p` (keeps at least one)."""
    words = _words(text)
    if len(words) < 2:
        return text
    keep = rng.random(len(words)) >= p
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(w for w, k in zip(words, keep, strict=True) if k)


def token_replace(text: str, rng: np.random.Generator, vocab: Sequence[str], p: float = 0.1) -> str:
    """Replace each token with probability `p` by a word drawn from the corpus vocabulary."""
    words = _words(text)
    if not words or not vocab:
        return text
    hits = rng.random(len(words)) < p
    for i in np.flatnonzero(hits):
        words[i] = vocab[int(rng.integers(len(vocab)))]
    return " ".join(words)


def sentence_span(text: str, rng: np.random.Generator) -> str:
    """A random contiguous run of sentences (or words, for single-sentence texts)."""
    parts = [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    if len(parts) < 2:
        words = _words(text)
        if len(words) < 6:
            return text
        length = int(rng.integers(max(3, len(words) // 3), len(words)))
        start = int(rng.integers(0, len(words) - length + 1))
        return " ".join(words[start : start + length])
    length = int(rng.integers(1, len(parts)))
    start = int(rng.integers(0, len(parts) - length + 1))
    return " ".join(parts[start : start + length])


def join(text: str, other: str, rng: np.random.Generator) -> str:
    """Concatenate with another text (in random order)."""
    return f"{text} {other}" if rng.random() < 0.5 else f"{other} {text}"


def corpus_vocabulary(texts: Sequence[str], size: int = 20_000) -> list[str]:
    """The most frequent whitespace tokens (replacement candidates)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_words(text.lower()))
    return [w for w, _ in counts.most_common(size)]


def augment_texts(
    texts: Sequence[str], copies: int, seed: int = 42
) -> tuple[list[str], np.ndarray]:
    """`copies` augmented variants of each text; returns (texts, source row index per variant).

    Each variant applies one or two of: token dropout, token replacement, sentence span, join
    with another comment. A joined variant's source is its first text.
    """
    rng = np.random.default_rng(seed)
    vocab = corpus_vocabulary(texts)
    out: list[str] = []
    source: list[int] = []
    n = len(texts)
    for copy in range(copies):
        for i, text in enumerate(texts):
            op = (i + copy + int(rng.integers(4))) % 4
            if op == 0:
                new = token_dropout(text, rng)
            elif op == 1:
                new = token_replace(text, rng, vocab)
            elif op == 2:
                new = sentence_span(text, rng)
            else:
                new = join(text, texts[int(rng.integers(n))], rng)
            if rng.random() < 0.3:  # stack a second, light perturbation
                new = token_dropout(new, rng, p=0.08)
            if new.strip():
                out.append(new)
                source.append(i)
    return out, np.asarray(source, dtype=np.int64)
