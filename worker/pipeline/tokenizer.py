"""Text to token ids, once per record, through the Rust `tokenizers` library.

The worker calls the fast tokenizer's Rust backend directly: one `encode_batch_fast` call per
fetched chunk, on the tokenizer thread (it releases the GIL, so the event loop keeps running).
Ids equal those of `transformers`' `tokenizer(texts, truncation=True, max_length=...)` (tested).
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from worker.backends.backend import SHAPE_MULTIPLE, ModelLoadError, TokenBatch, padded_length

TOKENIZER_FILE = "tokenizer.json"


def _special_token(config: dict[str, Any], name: str, default: str) -> str:
    value = config.get(name, default)
    return str(value.get("content", default)) if isinstance(value, dict) else str(value)


class TextTokenizer:
    """A truncating, non-padding tokenizer; `pad` turns its output into a `TokenBatch`."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int) -> None:
        tokenizer.enable_truncation(max_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self.max_length = max_length
        self.pad_id = pad_id

    @classmethod
    def load(cls, model_dir: Path, max_length: int) -> TextTokenizer:
        """From the artifact's `tokenizer.json`; a directory with only a slow tokenizer's files
        (e.g. `vocab.txt`) is converted once through `transformers` (not in the CPU image: such
        an artifact is refused there with what to do)."""
        config_file = model_dir / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if not (model_dir / TOKENIZER_FILE).is_file() and find_spec("transformers") is None:
            raise ModelLoadError(
                f"{model_dir} has no {TOKENIZER_FILE}, and converting its slow tokenizer needs "
                "transformers, which is not installed: save the fast tokenizer with the artifact "
                "(tokenizer.save_pretrained), or pip install 'moderation-worker[torch]'"
            )
        try:
            if (model_dir / TOKENIZER_FILE).is_file():
                tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
            else:
                from transformers import AutoTokenizer

                converted = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
                tokenizer = Tokenizer.from_str(converted.backend_tokenizer.to_str())
        except Exception as exc:
            first_line = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise ModelLoadError(
                f"cannot load the tokenizer of {model_dir}: {type(exc).__name__}: {first_line}"
            ) from exc
        if config.get("padding_side", "right") != "right" or (
            config.get("truncation_side", "right") != "right"
        ):
            raise ModelLoadError(f"{model_dir}: only right padding and truncation are served")
        pad_id = tokenizer.token_to_id(_special_token(config, "pad_token", "[PAD]"))
        return cls(tokenizer, max_length, pad_id if pad_id is not None else 0)

    def serialized(self) -> str:
        """The whole tokenizer as JSON (vocabulary, normalization, truncation): equal strings
        give equal ids."""
        return self._tokenizer.to_str()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included, cut at `max_length`."""
        if not texts:
            return []
        return [encoding.ids for encoding in self._encode(texts)]

    def pad(self, sequences: list[list[int]], multiple: int = SHAPE_MULTIPLE) -> TokenBatch:
        """Right-pad to the longest sequence, rounded up to `multiple`: the kernels then see a
        few shapes again and again (and warm-up can run them all at start)."""
        width = padded_length(max(len(ids) for ids in sequences), multiple)
        input_ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return TokenBatch(input_ids, attention_mask, np.zeros_like(input_ids))
