"""The OpenVINO backend: scores against torch fp32 (a tiny random BERT, and the default model on
real comments under the accuracy rule), and its refusals, each one line before anything runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import BertForSequenceClassification

from schemas.artifact import TOXICITY_LABELS
from testing.models import eager_probabilities, tiny_bert
from training.onnx_export import ONNX_FILE, export_onnx
from training.precision_rule import check_precision
from worker.backends.backend import ModelLoadError, TokenBatch
from worker.backends.hardware import read_cpu
from worker.backends.model import DEFAULT_MODEL_DIR, load_served_model
from worker.backends.onnx_metadata import parse_metadata, read_metadata
from worker.backends.openvino_backend import OpenVinoBackend
from worker.backends.runtime import choose_runtime

REPO = Path(__file__).resolve().parents[2]
LABELS = tuple(TOXICITY_LABELS)
VOCAB = 100
SHAPES = [(1, 8), (3, 32), (8, 64), (5, 17), (16, 96)]
REAL_COMMENTS = 3000  # of the labelled validation split
NATIVE_BF16 = bool(read_cpu().native_bf16)


def padded_batch(batch: int, length: int, rng: np.random.Generator) -> TokenBatch:
    """Random ids, right padding of random length (row 0 always full), random segment ids."""
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[0] = length
    positions = np.arange(length)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, VOCAB, size=(batch, length), dtype=np.int64) * mask
    segments = (positions >= (lengths[:, None] // 2)).astype(np.int64) * mask
    return TokenBatch(ids, mask, segments)


@pytest.fixture(scope="module")
def artifact(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, BertForSequenceClassification]:
    directory = tmp_path_factory.mktemp("tiny-openvino")
    model = tiny_bert(0, vocab_size=VOCAB, max_position_embeddings=128)
    model.save_pretrained(directory, safe_serialization=True)
    export_onnx(directory)
    return directory, model


@pytest.fixture(scope="module")
def fp32(artifact: tuple[Path, BertForSequenceClassification]) -> OpenVinoBackend:
    return OpenVinoBackend.load(artifact[0], LABELS, threads=1, precision="fp32")


# --- scores -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "length"), SHAPES)
def test_fp32_matches_torch_sigmoid(
    artifact: tuple[Path, BertForSequenceClassification],
    fp32: OpenVinoBackend,
    batch: int,
    length: int,
) -> None:
    rng = np.random.default_rng(batch * 1000 + length)
    tokens = padded_batch(batch, length, rng)
    got = fp32.infer(tokens)
    assert got.dtype == np.float32 and got.shape == (batch, len(LABELS))
    np.testing.assert_allclose(got, eager_probabilities(artifact[1], tokens), rtol=0, atol=1e-5)


def test_passes_of_other_shapes_after_warm_up_score_as_alone(fp32: OpenVinoBackend) -> None:
    """One infer request serves every shape: a pass is not changed by the ones before it."""
    rng = np.random.default_rng(7)
    batches = [padded_batch(b, n, rng) for b, n in SHAPES]
    alone = [fp32.infer(batch) for batch in batches]
    fp32.warm_up([(4, 32), (2, 64)])
    for got, expected in zip(fp32.infer_passes(batches[::-1]), alone[::-1], strict=True):
        np.testing.assert_array_equal(got, expected)


# the precisions `auto` can pick for this backend on this CPU (bf16 only where it is native)
@pytest.mark.parametrize("precision", ["fp32", *(["bf16"] if NATIVE_BF16 else [])])
def test_scores_on_real_comments_equal_torch_fp32_within_the_accuracy_rule(
    precision: str,
) -> None:
    """The default model as it ships (its own model.onnx, which the load checks against its
    weights and labels), at every precision `auto` can pick for this backend, on the labelled
    validation split."""
    from bench.corpus import DEFAULT_CORPUS, validation_split

    if not DEFAULT_CORPUS.is_file():
        pytest.skip(f"the Jigsaw rows are not at {DEFAULT_CORPUS}")
    validation = validation_split(DEFAULT_CORPUS, limit=REAL_COMMENTS)
    assert validation is not None and validation.labels is not None
    reference = load_served_model(
        DEFAULT_MODEL_DIR, backend="torch", device="cpu", precision="fp32", threads=1
    )
    served = load_served_model(
        DEFAULT_MODEL_DIR, backend="openvino", device="cpu", precision=precision, threads=1
    )
    assert (served.backend.kind, served.backend.precision) == ("openvino", precision)
    expected, got = reference.score(validation.texts), served.score(validation.texts)
    check = check_precision(
        expected,
        got,
        validation.labels,
        served.contract.labels,
        served.contract.label_thresholds,
    )
    assert check.passed, check.as_dict()
    if precision == "fp32":
        assert check.max_abs_diff < 1e-4, check.max_abs_diff


# --- refusals ---------------------------------------------------------------------------------


def test_an_artifact_without_the_fp32_graph_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.onnx is missing"):
        OpenVinoBackend.load(tmp_path, LABELS, threads=1)


def test_precisions_other_than_fp32_and_bf16_are_refused(
    artifact: tuple[Path, BertForSequenceClassification],
) -> None:
    for precision in ("int8", "fp16"):
        with pytest.raises(ModelLoadError, match="serves precision fp32 or bf16"):
            OpenVinoBackend.load(artifact[0], LABELS, threads=1, precision=precision)
    with pytest.raises(ModelLoadError, match="runs on cpu"):
        OpenVinoBackend.load(artifact[0], LABELS, threads=1, device="cuda:0")


def test_without_openvino_installed_the_load_is_refused(
    artifact: tuple[Path, BertForSequenceClassification], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ModelLoadError, match=r"openvino is not installed: pip install"):
        OpenVinoBackend.load(artifact[0], LABELS, threads=1)


def test_a_graph_of_other_labels_or_weights_is_refused(
    artifact: tuple[Path, BertForSequenceClassification], tmp_path: Path
) -> None:
    import onnx

    graph = onnx.load(str(artifact[0] / ONNX_FILE))
    for key, value, message in (
        ("labels", json.dumps(["a", "b", "c", "d", "e", "f"]), "was exported with labels"),
        ("weights_version", "000000000000", "was exported from weights 000000000000"),
    ):
        target = tmp_path / key
        shutil.copytree(artifact[0], target)
        stale = onnx.ModelProto()
        stale.CopyFrom(graph)
        for prop in stale.metadata_props:
            if prop.key == key:
                prop.value = value
        onnx.save(stale, str(target / ONNX_FILE))
        with pytest.raises(ModelLoadError, match=message):
            OpenVinoBackend.load(target, LABELS, threads=1)


def test_a_corrupt_graph_is_refused_in_one_line(
    artifact: tuple[Path, BertForSequenceClassification], tmp_path: Path
) -> None:
    target = tmp_path / "corrupt"
    shutil.copytree(artifact[0], target)
    (target / ONNX_FILE).write_bytes(b"\x0a\xff\xff\xff\xff not a graph")
    with pytest.raises(ModelLoadError) as raised:
        OpenVinoBackend.load(target, LABELS, threads=1)
    assert "\n" not in str(raised.value) and "model.onnx" in str(raised.value)


def test_metadata_is_read_as_onnx_writes_it(
    artifact: tuple[Path, BertForSequenceClassification],
) -> None:
    from training.onnx_export import read_metadata as onnx_read_metadata

    path = artifact[0] / ONNX_FILE
    assert read_metadata(path) == onnx_read_metadata(path)
    assert parse_metadata(b"") == {}


def test_backend_openvino_is_refused_at_plan_without_graph_or_library(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.backends.runtime

    with pytest.raises(ModelLoadError, match=r"backend openvino reads .*model\.onnx"):
        choose_runtime(
            tiny_model_dir, backend="openvino", device="cpu", precision="auto", threads=1
        )
    monkeypatch.setattr(worker.backends.runtime, "gpu_may_be_present", lambda: True)
    with pytest.raises(ModelLoadError, match="runs on cpu, not 'cuda'"):
        choose_runtime(
            tiny_model_dir, backend="openvino", device="cuda", precision="auto", threads=1
        )
    monkeypatch.setattr(worker.backends.runtime, "openvino_installed", lambda: False)
    monkeypatch.setattr(worker.backends.runtime, "ONNX_FILES", {"fp32": "config.json"})
    with pytest.raises(ModelLoadError, match="openvino is not installed"):
        choose_runtime(
            tiny_model_dir, backend="openvino", device="cpu", precision="auto", threads=1
        )


def test_the_worker_refuses_backend_openvino_for_an_artifact_without_onnx(
    tiny_model_dir: Path,
) -> None:
    """Through the real entry point: one line, exit 2, before torch is imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "worker", "run", "--bootstrap-servers", "h:1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={
            "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "MODERATION_METRICS_PORT": "0",
            "MODERATION_BACKEND": "openvino", "MODERATION_MODEL": str(tiny_model_dir),
        },
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert result.returncode == 2, result.stderr[-2000:]
    assert lines[-1].startswith("moderation-worker: backend openvino reads "), lines
    assert "model.onnx, which is missing" in lines[-1]
    assert "torch" not in imported and "openvino" not in imported
