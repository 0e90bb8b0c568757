"""The served model: artifact contract + tokenizer + backend, loaded and checked at start.
`--model` takes an artifact directory, or a training run directory (its `model/` is served).

A model that cannot be served (missing directory, no safetensors weights, corrupt weights, not
multi-label, incomplete classifier, a teacher checkpoint) raises `ModelLoadError`: the worker
refuses to start.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.artifact import CONFIG_FILE, ArtifactContract, ArtifactError, read_contract
from worker.backends.autoselect import BUDGET_S, measure_shapes, select_backend
from worker.backends.backend import Backend, ModelLoadError
from worker.backends.runtime import Candidate, Runtime, choose_runtime
from worker.config import Settings
from worker.pipeline.batching import forward_passes
from worker.pipeline.language import LanguageDetector, LanguageModelError
from worker.pipeline.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"  # worker/default_model
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]
# A tokenizer: the fast one's file, or a slow one's vocabulary (converted at load)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")
RUN_MODEL_DIR = "model"  # a training run directory's artifact (`moderation-train fit/distill`)
TEACHER_HEAD_FILE = "head.safetensors"  # the separate head of a mean-pooled teacher


@dataclass(frozen=True)
class ModelPlan:
    """What would be served and how, checked without importing the backend's libraries
    (torch, transformers, onnxruntime): the cheap checks that let a bad model, path or device
    fail in well under a second, before anything else starts."""

    model_dir: Path
    contract: ArtifactContract
    runtime: Runtime


@dataclass(frozen=True)
class ServedModel:
    contract: ArtifactContract
    tokenizer: TextTokenizer
    backend: Backend
    token_budget: (
        int  # padded tokens per forward pass (see `worker.pipeline.batching.forward_passes`)
    )
    runtime: Runtime  # what was chosen to serve it, and why
    # identifies each comment's language where tokenization runs (None: detection is off)
    language: LanguageDetector | None = None

    def infer(self, sequences: list[list[int]]) -> np.ndarray:
        """(len(sequences), labels) probabilities, rows in the order given."""
        probabilities = np.empty((len(sequences), len(self.contract.labels)), dtype=np.float32)
        passes = forward_passes([len(ids) for ids in sequences], self.token_budget)
        padded = [self.tokenizer.pad([sequences[i] for i in indices]) for indices in passes]
        for indices, rows in zip(passes, self.backend.infer_passes(padded), strict=True):
            probabilities[indices] = rows
        return probabilities

    def score(self, texts: list[str]) -> np.ndarray:
        """Tokenize and infer, in the calling thread (benchmarks, tools, tests)."""
        return self.infer(self.tokenizer.encode(texts))


def resolve_source(source: str | Path | None) -> Path:
    """A local artifact directory: the bundled model for None, a path as given, or a Hugging
    Face hub id from the local cache (or the hub, where it can be reached)."""
    if source is None:
        return DEFAULT_MODEL_DIR
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model {str(source)!r} is a file; give an artifact directory")
        if not (path / CONFIG_FILE).is_file() and (path / RUN_MODEL_DIR / CONFIG_FILE).is_file():
            log.info("%s is a training run directory: serving its artifact %s", path, RUN_MODEL_DIR)
            return path / RUN_MODEL_DIR
        return path
    if path.is_absolute() or str(source).startswith((".", "~")) or str(source).count("/") > 1:
        raise ModelLoadError(f"model directory {str(source)!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), allow_patterns=HUB_FILES))
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise ModelLoadError(
            f"model {str(source)!r} is not a local directory, and as a Hugging Face hub id it "
            f"cannot be fetched: {reason}"
        ) from None


def check_not_teacher(model_dir: Path) -> None:
    """A teacher checkpoint (`moderation-train fit --pooling mean`: a bare encoder whose
    `config.json` says `"pooling": "mean"`, its head in `head.safetensors`) is refused before
    any library loads it (transformers would first log the classifier it initializes at
    random)."""
    try:
        pooling = json.loads((model_dir / CONFIG_FILE).read_text()).get("pooling")
    except (OSError, ValueError, AttributeError):
        pooling = None  # read_contract says what is wrong with the config
    if pooling == "mean" or (model_dir / TEACHER_HEAD_FILE).is_file():
        raise ModelLoadError(
            f"{model_dir}: this is a teacher checkpoint, distill or fine-tune it first "
            f"(moderation-train distill --teacher {model_dir} ..., see training/README.md); "
            "the worker serves stock sequence classifiers only"
        )


def check_tokenizer_files(model_dir: Path) -> None:
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{model_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
            "not a complete model artifact"
        )


def read_served_contract(model_dir: Path, name: str) -> ArtifactContract:
    try:
        return read_contract(model_dir, name)
    except ArtifactError as exc:
        raise ModelLoadError(str(exc)) from None


def plan_served_model(
    source: str | Path | None,
    *,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int | str = "auto",
    cache_dir: Path | None = None,
    shapes: list[tuple[int, int]] | None = None,
) -> ModelPlan:
    """The artifact's directory and contract and the runtime choices, or `ModelLoadError`
    (one line): missing path, not an artifact, no weights or tokenizer, CUDA asked for on a
    machine without a GPU driver. A CPU backend `auto` is looked up in the choice cache under
    `cache_dir` for the timed `shapes` (None: those of the default settings)."""
    model_dir = resolve_source(source)
    name = model_dir.name if source is None or Path(source).exists() else str(source)
    check_not_teacher(model_dir)
    contract = read_served_contract(model_dir, name)
    check_tokenizer_files(model_dir)
    runtime = choose_runtime(
        model_dir,
        backend=backend,
        device=device,
        precision=precision,
        threads=threads,
        artifact_version=contract.model_version,
        cache_dir=cache_dir,
        shapes=shapes if shapes is not None else default_measure_shapes(),
    )
    return ModelPlan(model_dir, contract, runtime)


def default_measure_shapes() -> list[tuple[int, int]]:
    defaults = Settings.model_fields
    return measure_shapes(
        defaults["max_batch_size"].default,
        defaults["token_budget"].default,
        defaults["max_length"].default,
    )


def load_backend(
    model_dir: Path,
    labels: tuple[str, ...],
    runtime: Runtime,
    candidate: Candidate,
    *,
    interop_threads: int = 0,
) -> Backend:
    """One backend of `runtime` (device, threads) in the candidate's precision."""
    backend, precision = candidate.backend, candidate.precision.value
    threads, device = runtime.threads.value, runtime.device.value
    if backend == "onnx":
        from worker.backends.onnx_backend import OnnxBackend

        return OnnxBackend.load(
            model_dir, labels, threads=threads, precision=precision, device=device
        )
    if backend == "openvino":
        from worker.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend.load(
            model_dir, labels, threads=threads, precision=precision, device=device
        )
    if backend == "torch":
        from worker.backends.torch_backend import TorchBackend

        return TorchBackend.load(
            model_dir,
            labels,
            device=device,
            precision=precision,
            threads=threads,
            interop_threads=interop_threads,
        )
    raise ModelLoadError(f"unknown backend {backend!r}: use auto, torch, onnx or openvino")


def load_served_model(
    source: str | Path | None,
    *,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int | str = "auto",
    interop_threads: int = 0,
    max_length: int = 128,
    token_budget: int = 2048,
    max_batch_size: int = 256,
    cache_dir: Path | None = None,
    measure_budget_s: float = BUDGET_S,
    language_detection: bool = False,
) -> ServedModel:
    """Load (or refuse) the artifact; `auto` settings are resolved by `choose_runtime`, and a
    CPU backend `auto` not remembered for this machine by timing its candidates
    (`worker.backends.autoselect`) on the shapes of these batching settings.
    `language_detection`: also load the language-identification model (the worker's setting
    `MODERATION_LANGUAGE_DETECTION`; off for tools that only score)."""
    shapes = measure_shapes(max_batch_size, token_budget, max_length)
    plan = plan_served_model(
        source,
        backend=backend,
        device=device,
        precision=precision,
        threads=threads,
        cache_dir=cache_dir,
        shapes=shapes,
    )
    model_dir, contract, runtime = plan.model_dir, plan.contract, plan.runtime
    tokenizer = TextTokenizer.load(model_dir, max_length)

    def load(candidate: Candidate) -> Backend:
        return load_backend(
            model_dir, contract.labels, runtime, candidate, interop_threads=interop_threads
        )

    if runtime.pending:
        selection = select_backend(
            runtime, load, shapes, cache_dir=cache_dir, budget_s=measure_budget_s
        )
        return ServedModel(
            contract, tokenizer, selection.backend, token_budget, selection.runtime,
            load_language_detector(language_detection),
        )  # fmt: skip
    served = load(Candidate(runtime.backend.value, runtime.precision))
    return ServedModel(
        contract, tokenizer, served, token_budget, runtime,
        load_language_detector(language_detection),
    )  # fmt: skip


def load_language_detector(enabled: bool) -> LanguageDetector | None:
    """The language-identification model, if `enabled`; a missing one refuses the start."""
    if not enabled:
        return None
    try:
        return LanguageDetector()
    except LanguageModelError as exc:
        raise ModelLoadError(f"{exc} (or set MODERATION_LANGUAGE_DETECTION=0)") from None


def plan_from_settings(settings: Settings) -> ModelPlan:
    """`plan_served_model` with the worker's settings."""
    return plan_served_model(
        settings.model,
        backend=settings.backend,
        device=settings.device,
        precision=settings.precision,
        threads=settings.inference_threads,
        cache_dir=settings.cache_dir,
        shapes=measure_shapes(settings.max_batch_size, settings.token_budget, settings.max_length),
    )


def load_from_settings(settings: Settings, **overrides: str | int) -> ServedModel:
    """`load_served_model` with the worker's settings (`overrides` replace some, e.g. for a
    benchmark comparing precisions)."""
    options: dict[str, Any] = {
        "backend": settings.backend,
        "device": settings.device,
        "precision": settings.precision,
        "threads": settings.inference_threads,
        "interop_threads": settings.torch_interop_threads,
        "max_length": settings.max_length,
        "token_budget": settings.token_budget,
        "language_detection": settings.language_detection,
        "max_batch_size": settings.max_batch_size,
        "cache_dir": settings.cache_dir,
    }
    return load_served_model(settings.model, **(options | overrides))
