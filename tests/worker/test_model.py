"""The served model: tokenize once, sigmoid per label, batched equals alone, what it refuses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from testing.models import LABELS, SAMPLE_TEXTS
from testing.worker_process import REPO_ROOT as REPO
from worker.backends.backend import ModelLoadError
from worker.backends.model import DEFAULT_MODEL_DIR, ServedModel, load_served_model
from worker.backends.torch_backend import resolve_device

TEXTS = SAMPLE_TEXTS


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> ServedModel:
    return load_served_model(
        tiny_model_dir, device="cpu", precision="fp32", max_length=64, token_budget=256
    )


def test_batched_scores_equal_single_scores(model: ServedModel) -> None:
    batched = model.score(TEXTS)
    alone = np.vstack([model.score([text]) for text in TEXTS])
    assert batched.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.ptp(batched[:, 0]) > 1e-3  # texts really get different scores


def test_scores_are_independent_sigmoids_of_the_stock_model(
    model: ServedModel, tiny_model_dir: Path
) -> None:
    """Our tokenizer + padding + backend equal the stock `transformers` call and forward pass,
    with a sigmoid per label (not a softmax)."""
    stock_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    stock_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    encoding = stock_tokenizer(
        TEXTS, padding="longest", truncation=True, max_length=64, return_tensors="pt"
    )
    with torch.inference_mode():
        expected = torch.sigmoid(stock_model(**encoding).logits).numpy()
    np.testing.assert_allclose(model.score(TEXTS), expected, atol=1e-5)
    assert not np.allclose(expected.sum(axis=1), 1.0)


def test_tokenizer_ids_equal_the_transformers_call(
    model: ServedModel, tiny_model_dir: Path
) -> None:
    stock = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [*TEXTS, "x" * 400, "a b"]
    assert (
        model.tokenizer.encode(texts) == stock(texts, truncation=True, max_length=64)["input_ids"]
    )


def test_padding_rounds_to_shape_multiples_with_masks(model: ServedModel) -> None:
    ids = model.tokenizer.encode(["short", "word " * 500])
    batch = model.tokenizer.pad(ids)
    assert batch.shape == (2, 64)  # truncated at 64, a multiple of 32
    assert batch.attention_mask[0].sum() == len(ids[0]) and batch.attention_mask[1].sum() == 64
    assert (batch.input_ids[0, len(ids[0]) :] == model.tokenizer.pad_id).all()
    assert model.tokenizer.pad(model.tokenizer.encode(["a", "b c"])).shape == (2, 32)


def test_labels_thresholds_and_identity_come_from_the_artifact(model: ServedModel) -> None:
    contract = model.contract
    assert list(contract.labels) == LABELS
    assert contract.label_thresholds == {label: 0.5 for label in LABELS}
    assert (contract.model_name, contract.model_version) == ("tiny-test-bert", "seed-0")
    row = np.array([0.5, 0.49, 0.9, 0.0, 1.0, 0.2], dtype=np.float32)
    assert contract.flagged(row) == ["toxic", "obscene", "insult"]


def copy_artifact(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_refuses_a_single_label_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    target = copy_artifact(tiny_model_dir, tmp_path / "single")
    config = orjson.loads((target / "config.json").read_bytes())
    config["problem_type"] = "single_label_classification"
    (target / "config.json").write_bytes(orjson.dumps(config))
    with pytest.raises(ModelLoadError, match="multi_label_classification"):
        load_served_model(target, device="cpu", precision="fp32")


def test_refuses_missing_and_pickled_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    target = copy_artifact(tiny_model_dir, tmp_path / "pickled")
    model = AutoModelForSequenceClassification.from_pretrained(target)
    (target / "model.safetensors").unlink()
    torch.save(model.state_dict(), target / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"no model\.safetensors"):
        load_served_model(target, device="cpu", precision="fp32")


def test_refuses_corrupt_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    target = copy_artifact(tiny_model_dir, tmp_path / "corrupt")
    (target / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        load_served_model(target, device="cpu", precision="fp32")


def test_refuses_a_checkpoint_without_its_classifier(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A bare encoder (e.g. a mean-pooled teacher's directory) would get a random head."""
    target = copy_artifact(tiny_model_dir, tmp_path / "encoder")
    model = AutoModelForSequenceClassification.from_pretrained(target)
    model.bert.save_pretrained(target)  # overwrites config + weights with the encoder only
    config = orjson.loads((target / "config.json").read_bytes())
    config |= {
        "problem_type": "multi_label_classification",
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
    }
    (target / "config.json").write_bytes(orjson.dumps(config))
    with pytest.raises(ModelLoadError, match="randomly initialized"):
        load_served_model(target, device="cpu", precision="fp32")


def test_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelLoadError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (lent device only)")
def test_cuda_scores_match_cpu(tiny_model_dir: Path) -> None:
    cpu = load_served_model(tiny_model_dir, device="cpu", precision="fp32").score(TEXTS)
    gpu = load_served_model(tiny_model_dir, device="cuda").score(TEXTS)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "MODERATION_LOG_LEVEL": "WARNING"}
        | (env or {}),
    )  # fmt: skip


def test_info_json_describes_the_default_model() -> None:
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    info = orjson.loads(result.stdout)
    assert info["labels"] == LABELS
    assert info["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Path(info["default_model_dir"]) == DEFAULT_MODEL_DIR == REPO / "worker" / "default_model"
    assert {"torch", "transformers", "aiokafka", "model", "thresholds", "backend"} <= set(info)
    assert info["label_base_rates"]["toxic"] == 0.096  # calibrated for the full Jigsaw rates


def test_the_worker_refuses_to_start_without_model_weights(tmp_path: Path) -> None:
    """The bundled model's directory without its weights: one line, exit 2, no stand-in.
    Checked before any broker is contacted (the bootstrap address is unreachable)."""
    target = copy_artifact(DEFAULT_MODEL_DIR, tmp_path / "default-without-weights")
    (target / "model.safetensors").unlink()
    result = run_cli(
        "run", "--model", str(target), "--bootstrap-servers", "127.0.0.1:1",
        env={"MODERATION_METRICS_PORT": "0"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "no model.safetensors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--max-batch-size", "0"], "invalid max_batch_size"),
        (["run", "--device", "tpu"], "invalid device"),
        (["run", "--max-wait-ms", "soon"], "invalid float value"),
        (["info", "--model", "/nonexistent/model"], "does not exist"),
        (["run", "--model", "/nonexistent/model"], "does not exist"),
    ],
)
def test_bad_arguments_get_one_line_and_nonzero_exit(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_training_run_directory_serves_its_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`--model RUN_DIR` (what `moderation-train fit/distill --output-dir` wrote) serves
    RUN_DIR/model, as `moderation-train evaluate` and `export` accept it."""
    run = tmp_path / "run"
    copy_artifact(tiny_model_dir, run / "model")
    (run / "checkpoint").mkdir()
    served = load_served_model(run, device="cpu", precision="fp32")
    direct = load_served_model(run / "model", device="cpu", precision="fp32")
    assert served.contract == direct.contract
    np.testing.assert_array_equal(served.score(TEXTS), direct.score(TEXTS))


def teacher_checkpoint(tiny_model_dir: Path, target: Path) -> Path:
    """What `moderation-train fit --pooling mean` writes: the encoder's directory with
    `"pooling": "mean"` in its config, plus the head in `head.safetensors`."""
    from safetensors.torch import save_file

    copy_artifact(tiny_model_dir, target)
    model = AutoModelForSequenceClassification.from_pretrained(target)
    model.bert.save_pretrained(target)  # the encoder only
    config = orjson.loads((target / "config.json").read_bytes())
    config |= {
        "pooling": "mean",
        "problem_type": "multi_label_classification",
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
    }
    (target / "config.json").write_bytes(orjson.dumps(config))
    head = {"weight": model.classifier.weight.detach(), "bias": model.classifier.bias.detach()}
    save_file({k: v.contiguous() for k, v in head.items()}, str(target / "head.safetensors"))
    return target


def test_a_teacher_checkpoint_is_refused_first_with_what_to_do(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """One line, exit 2, before transformers loads it (no "newly initialized" lines), from its
    artifact directory or its run directory."""
    run = tmp_path / "teacher-run"
    teacher = teacher_checkpoint(tiny_model_dir, run / "model")
    for source in (teacher, run):
        with pytest.raises(ModelLoadError, match="this is a teacher checkpoint, distill or"):
            load_served_model(source, device="cpu", precision="fp32")
    result = run_cli(
        "run", "--model", str(run), "--bootstrap-servers", "127.0.0.1:1",
        env={"MODERATION_METRICS_PORT": "0"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "this is a teacher checkpoint, distill or fine-tune it first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
