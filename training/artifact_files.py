"""The files of an artifact directory: their names, finding the artifact in a run directory,
and removing an earlier export's files before a new one is written."""

from __future__ import annotations

from pathlib import Path

from schemas.artifact import CONFIG_FILE, WEIGHTS_FILE
from training.sources import UsageError

INFO_FILE = "training_info.json"
CARD_FILE = "README.md"
HISTORY_FILE = "history.json"
ARTIFACT_FILE_NAMES = frozenset(
    {
        CONFIG_FILE,
        INFO_FILE,
        CARD_FILE,
        HISTORY_FILE,
        f"{WEIGHTS_FILE}.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "chat_template.jinja",
        "generation_config.json",
    }
)


def resolve_model_dir(source: Path) -> Path:
    """An artifact directory, or the `model/` directory inside a fit/distill run directory."""
    if (source / CONFIG_FILE).is_file():
        return source
    if (source / "model" / CONFIG_FILE).is_file():
        return source / "model"
    if not source.is_dir():
        raise UsageError(f"{source}: no such directory")
    raise UsageError(f"{source}: neither an artifact nor a run directory (no config.json)")


def remove_artifact_files(out_dir: Path, *, keep: tuple[str, ...] = ()) -> None:
    """Delete the files an export writes (weights, ONNX graphs, config, tokenizer, card, info,
    history) from `out_dir`, so that none of an earlier model's is left beside the new one;
    other files are left alone."""
    if not out_dir.is_dir():
        return
    for item in out_dir.iterdir():
        if item.name in keep or not item.is_file():
            continue
        if item.name in ARTIFACT_FILE_NAMES or item.suffix in (".safetensors", ".onnx"):
            item.unlink()
