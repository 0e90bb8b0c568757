"""The ONNX Runtime backend against torch on a tiny random multi-label BERT, exported for real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from schemas.artifact import TOXICITY_LABELS
from worker.backends.backend import Backend, ModelLoadError, TokenBatch

pytest.importorskip("onnxruntime")  # the `onnx` extra; the dev extra installs it
pytest.importorskip("onnx")

# only the reference side (and the export) use torch and transformers
from transformers import BertForSequenceClassification

from testing.models import eager_probabilities, tiny_bert
from training.onnx_export import (
    INT8_FILE,
    ONNX_FILE,
    export_onnx,
    quantize_int8,
    read_metadata,
    store_exact_fp16,
)
from worker.backends.onnx_backend import OnnxBackend

REPO = Path(__file__).resolve().parents[2]
LABELS = tuple(TOXICITY_LABELS)
VOCAB = 100
SHAPES = [(1, 8), (3, 32), (8, 64), (5, 17), (16, 96)]


def build_model(directory: Path, seed: int = 0) -> BertForSequenceClassification:
    model = tiny_bert(seed, vocab_size=VOCAB, max_position_embeddings=128)
    model.save_pretrained(directory, safe_serialization=True)
    return model


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
    directory = tmp_path_factory.mktemp("tiny-onnx")
    model = build_model(directory)
    quantize_int8(export_onnx(directory))
    return directory, model


@pytest.fixture(scope="module")
def fp32(artifact: tuple[Path, BertForSequenceClassification]) -> OnnxBackend:
    return OnnxBackend.load(artifact[0], LABELS, threads=1)


# --- export -----------------------------------------------------------------------------------


def test_export_writes_graph_with_dynamic_int64_inputs_and_one_output(
    artifact: tuple[Path, BertForSequenceClassification],
) -> None:
    import onnx

    directory, _ = artifact
    assert (directory / ONNX_FILE).is_file() and (directory / INT8_FILE).is_file()
    graph = onnx.load(str(directory / ONNX_FILE)).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    for tensor in inputs.values():
        assert tensor.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor.shape.dim] == ["batch", "sequence"]
    (output,) = graph.output
    assert output.name == "probabilities"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert output.type.tensor_type.shape.dim[1].dim_value == len(LABELS)
    assert [n.op_type for n in graph.node].count("Sigmoid") == 1
    assert "Softmax" not in [n.op_type for n in graph.node if "classifier" in n.name]


def test_export_records_weights_and_labels(
    artifact: tuple[Path, BertForSequenceClassification],
) -> None:
    from schemas.artifact import weights_version

    directory, _ = artifact
    for name in (ONNX_FILE, INT8_FILE):
        meta = read_metadata(directory / name)
        assert json.loads(meta["labels"]) == list(LABELS)
        assert meta["weights_version"] == weights_version(directory / "model.safetensors")


def test_export_refuses_single_label_models(tmp_path: Path) -> None:
    build_model(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["problem_type"] = "single_label_classification"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="multi_label_classification"):
        export_onnx(tmp_path)
    assert not (tmp_path / ONNX_FILE).exists()


def test_export_to_another_path(
    artifact: tuple[Path, BertForSequenceClassification], tmp_path: Path
) -> None:
    out = export_onnx(artifact[0], tmp_path / "elsewhere" / "graph.onnx")
    assert out == tmp_path / "elsewhere" / "graph.onnx" and out.is_file()


def test_weights_fp16_holds_exactly_are_stored_in_fp16_with_the_same_scores(tmp_path: Path) -> None:
    """As artifacts store their weights in fp16, the fp32 graph keeps them in fp16 and casts
    them back: half the bytes, bit-identical scores; a weight fp16 would round stays fp32."""
    import onnx
    import torch
    from onnx import numpy_helper

    model = tiny_bert(0, vocab_size=VOCAB, max_position_embeddings=128)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
        model.classifier.bias.fill_(0.1)  # not exact in fp16
    model.save_pretrained(tmp_path, safe_serialization=True)
    path = export_onnx(tmp_path)
    rng = np.random.default_rng(3)
    batches = [padded_batch(batch, length, rng) for batch, length in SHAPES]
    before = [OnnxBackend.load(tmp_path, LABELS, threads=1).infer(b) for b in batches]
    size, metadata = path.stat().st_size, read_metadata(path)

    assert store_exact_fp16(path) > 0
    assert path.stat().st_size < 0.8 * size and read_metadata(path) == metadata  # tiny: graph-heavy
    weights = onnx.load(str(path)).graph.initializer
    kept = [numpy_helper.to_array(t) for t in weights if t.data_type == onnx.TensorProto.FLOAT]
    assert [w.shape for w in kept if w.size > 1] == [(len(LABELS),)]  # the classifier's bias
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in weights) > 10
    after = [OnnxBackend.load(tmp_path, LABELS, threads=1).infer(b) for b in batches]
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)


# --- fp32 parity ------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "length"), SHAPES)
def test_fp32_matches_torch_sigmoid(
    artifact: tuple[Path, BertForSequenceClassification],
    fp32: OnnxBackend,
    batch: int,
    length: int,
) -> None:
    rng = np.random.default_rng(batch * 1000 + length)
    tokens = padded_batch(batch, length, rng)
    expected = eager_probabilities(artifact[1], tokens)
    got = fp32.infer(tokens)
    assert got.dtype == np.float32
    assert got.shape == (batch, len(LABELS))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert ((got > 0) & (got < 1)).all()


def test_scores_are_spread_so_parity_means_something(fp32: OnnxBackend) -> None:
    got = fp32.infer(padded_batch(16, 32, np.random.default_rng(7)))
    assert got.std() > 0.05  # not every probability stuck at 0.5
    assert not np.allclose(got.sum(axis=1), 1.0, atol=1e-3)  # per-label sigmoid, not softmax


def test_padding_does_not_change_a_row(fp32: OnnxBackend) -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(1, VOCAB, size=(1, 10), dtype=np.int64)
    alone = fp32.infer(TokenBatch(ids, np.ones_like(ids), np.zeros_like(ids)))
    padded_ids = np.zeros((4, 64), dtype=np.int64)
    padded_ids[:, :10] = ids
    padded_ids[1:, 10:] = rng.integers(1, VOCAB, size=(3, 54))  # other rows are full length
    mask = np.ones_like(padded_ids)
    mask[0, 10:] = 0
    padded = fp32.infer(TokenBatch(padded_ids, mask, np.zeros_like(padded_ids)))
    np.testing.assert_allclose(padded[0], alone[0], rtol=0, atol=1e-5)


# --- int8 -------------------------------------------------------------------------------------


def test_int8_is_close_to_fp32(artifact: tuple[Path, BertForSequenceClassification]) -> None:
    int8 = OnnxBackend.load(artifact[0], LABELS, threads=1, precision="int8")
    assert int8.precision == "int8" and int8.path.name == INT8_FILE
    rng = np.random.default_rng(11)
    for batch, length in SHAPES:
        tokens = padded_batch(batch, length, rng)
        expected = eager_probabilities(artifact[1], tokens)
        got = int8.infer(tokens)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() < 0.05


# --- the Backend contract ---------------------------------------------------------------------


def test_backend_attributes_and_threads(fp32: OnnxBackend) -> None:
    backend: Backend = fp32  # satisfies the protocol (checked by type checkers)
    assert backend.kind == "onnx"
    assert backend.device == "cpu"
    assert backend.precision == "fp32"
    assert backend.labels == LABELS
    options = fp32.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert fp32.session.get_providers() == ["CPUExecutionProvider"]
    two = OnnxBackend.load(fp32.path.parent, LABELS, threads=2)
    assert two.session.get_session_options().intra_op_num_threads == 2


def test_warm_up_runs_each_shape_once(
    artifact: tuple[Path, BertForSequenceClassification], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = OnnxBackend.load(artifact[0], LABELS, threads=1)
    seen: list[tuple[int, int]] = []
    real = backend.infer

    def spy(batch: TokenBatch) -> np.ndarray:
        seen.append(batch.shape)
        out = real(batch)
        assert out.shape == (batch.shape[0], len(LABELS))
        return out

    monkeypatch.setattr(backend, "infer", spy)
    backend.warm_up([(1, 32), (8, 64), (64, 32)])
    assert seen == [(1, 32), (8, 64), (64, 32)]


# --- refusals ---------------------------------------------------------------------------------


def test_missing_model_onnx_says_to_export(tmp_path: Path) -> None:
    build_model(tmp_path)
    with pytest.raises(ModelLoadError, match="export") as caught:
        OnnxBackend.load(tmp_path, LABELS, threads=1)
    assert "model.onnx" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_int8_says_to_quantize(
    artifact: tuple[Path, BertForSequenceClassification], tmp_path: Path
) -> None:
    for name in ("config.json", "model.safetensors", ONNX_FILE):
        shutil.copy(artifact[0] / name, tmp_path / name)
    OnnxBackend.load(tmp_path, LABELS, threads=1)  # fp32 is there
    with pytest.raises(ModelLoadError, match="quantize_int8"):
        OnnxBackend.load(tmp_path, LABELS, threads=1, precision="int8")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto", "FP32"])
def test_other_precisions_are_refused_in_one_line(
    artifact: tuple[Path, BertForSequenceClassification], precision: str
) -> None:
    with pytest.raises(ModelLoadError, match="precision") as caught:
        OnnxBackend.load(artifact[0], LABELS, threads=1, precision=precision)
    assert "\n" not in str(caught.value)


def test_stale_graph_is_refused(
    artifact: tuple[Path, BertForSequenceClassification], tmp_path: Path
) -> None:
    shutil.copy(artifact[0] / ONNX_FILE, tmp_path / ONNX_FILE)
    build_model(tmp_path, seed=1)  # retrained weights, old model.onnx left behind
    with pytest.raises(ModelLoadError, match="exported from weights"):
        OnnxBackend.load(tmp_path, LABELS, threads=1)


def test_other_labels_are_refused(artifact: tuple[Path, BertForSequenceClassification]) -> None:
    with pytest.raises(ModelLoadError, match="labels"):
        OnnxBackend.load(artifact[0], tuple(reversed(LABELS)), threads=1)
    with pytest.raises(ModelLoadError, match="labels"):
        OnnxBackend.load(artifact[0], LABELS[:5], threads=1)


def test_corrupt_graph_is_refused(tmp_path: Path) -> None:
    (tmp_path / ONNX_FILE).write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelLoadError, match="cannot be loaded") as caught:
        OnnxBackend.load(tmp_path, LABELS, threads=1)
    assert "\n" not in str(caught.value)


def test_bad_threads_and_devices_are_refused(
    artifact: tuple[Path, BertForSequenceClassification],
) -> None:
    import onnxruntime

    with pytest.raises(ModelLoadError, match="threads"):
        OnnxBackend.load(artifact[0], LABELS, threads=0)
    with pytest.raises(ModelLoadError, match="cpu or cuda"):
        OnnxBackend.load(artifact[0], LABELS, threads=1, device="mps")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ModelLoadError, match="CUDAExecutionProvider"):
            OnnxBackend.load(artifact[0], LABELS, threads=1, device="cuda")


# --- no torch in the serving path -------------------------------------------------------------


def test_serving_onnx_imports_neither_torch_nor_transformers(
    artifact: tuple[Path, BertForSequenceClassification],
) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "import worker.backends.onnx_backend as m\n"
        "from worker.backends.backend import TokenBatch\n"
        "from schemas.artifact import TOXICITY_LABELS\n"
        "b = m.OnnxBackend.load(Path(sys.argv[1]), tuple(TOXICITY_LABELS), threads=1)\n"
        "ids = np.ones((2, 8), dtype=np.int64)\n"
        "assert b.infer(TokenBatch(ids, ids, 0 * ids)).shape == (2, 6)\n"
        "heavy = sorted(n for n in ('torch', 'transformers') if n in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(artifact[0])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
