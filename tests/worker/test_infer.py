"""The model backend: sigmoid per label, batched equals alone, what it refuses to load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from tests.conftest import LABELS, REPO
from worker.infer import ModelLoadError, Scorer, resolve_device

TEXTS = [
    "ok",
    "You are a complete idiot and everybody here knows it, go away now.",
    "a much longer comment about the history of the river " * 30,
    "Ünïcödé 🎉",
    "",
]


def copy_tokenizer(source: Path, target: Path) -> None:
    for path in source.glob("tokenizer*"):
        (target / path.name).write_bytes(path.read_bytes())


@pytest.fixture(scope="module")
def scorer(tiny_model_dir: Path) -> Scorer:
    return Scorer.load(tiny_model_dir, device="cpu", max_length=64)


def test_batched_scores_equal_single_scores(scorer: Scorer) -> None:
    batched = scorer.score(TEXTS)
    alone = np.vstack([scorer.score([text]) for text in TEXTS])
    assert batched.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.ptp(batched[:, 0]) > 1e-3  # texts really get different scores


def test_scores_are_independent_sigmoids_not_a_softmax(scorer: Scorer) -> None:
    encoding = scorer.tokenize(TEXTS)
    with torch.inference_mode():
        logits = scorer.model(**encoding).logits
    np.testing.assert_allclose(scorer.infer(encoding), torch.sigmoid(logits).numpy(), atol=1e-6)
    assert not np.allclose(scorer.score(TEXTS).sum(axis=1), 1.0)


def test_truncates_at_max_length_and_pads_to_the_longest(scorer: Scorer) -> None:
    encoding = scorer.tokenize(["short", "word " * 500])
    assert encoding["input_ids"].shape == (2, 64)
    assert scorer.tokenize(["short", "two words"])["input_ids"].shape[1] < 10


@pytest.mark.parametrize("token_budget", [0, 256])
def test_direct_backend_tokenization_equals_the_transformers_call(
    tiny_model_dir: Path, token_budget: int
) -> None:
    """The Rust-backend fast path must give exactly the ids, types and masks of the stock
    tokenizer call, padded the same way (to the longest, or to multiples of 32 when bucketing)."""
    scorer = Scorer.load(tiny_model_dir, device="cpu", max_length=64, token_budget=token_budget)
    assert scorer._encoder is not None  # the fast path is really taken
    texts = [*TEXTS, "Hello, WORLD!!! ça va? 日本語のテキスト", "x" * 400, " \t\n ", "a b"]
    for batch in (texts, texts[:1], texts[2:3], texts[4:]):
        fast = scorer.tokenize(batch)
        stock = scorer.tokenizer(
            batch,
            padding="longest",
            truncation=True,
            max_length=64,
            return_tensors="pt",
            pad_to_multiple_of=32 if token_budget else None,
        )
        assert set(fast) == set(stock)
        for name in stock:
            assert torch.equal(fast[name], stock[name]), (name, batch)
    if token_budget:  # buckets by real token counts: each text once, each bucket as stock
        buckets = scorer.tokenize_buckets(texts)
        assert len(buckets) > 1
        assert sorted(i for indices, _ in buckets for i in indices) == list(range(len(texts)))
        for indices, encoding in buckets:
            stock = scorer.tokenizer(
                [texts[i] for i in indices],
                padding="longest",
                truncation=True,
                max_length=64,
                return_tensors="pt",
                pad_to_multiple_of=32,
            )
            assert encoding["input_ids"].numel() <= max(token_budget, 64)
            for name in stock:
                assert torch.equal(encoding[name], stock[name]), (name, indices)


def test_warm_up_runs_every_bucketed_shape(tiny_model_dir: Path) -> None:
    scorer = Scorer.load(tiny_model_dir, device="cpu", max_length=64, token_budget=256)
    # lengths 32 and 64; batch sizes up to min(16, 256 // length): 8 + 4
    assert scorer.warm_up(16) == 8 + 4
    unbucketed = Scorer.load(tiny_model_dir, device="cpu", max_length=64)
    assert unbucketed.warm_up(16) == 1


def test_labels_thresholds_and_identity_come_from_the_artifact(scorer: Scorer) -> None:
    assert scorer.labels == LABELS
    assert scorer.thresholds == {label: 0.5 for label in LABELS}
    assert (scorer.name, scorer.version) == ("tiny-test-bert", "seed-0")
    row = np.array([0.5, 0.49, 0.9, 0.0, 1.0, 0.2], dtype=np.float32)
    assert scorer.flagged(row) == ["toxic", "obscene", "insult"]


def test_refuses_a_single_label_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    model.config.problem_type = "single_label_classification"
    model.save_pretrained(tmp_path)
    copy_tokenizer(tiny_model_dir, tmp_path)
    with pytest.raises(ModelLoadError, match="multi_label_classification"):
        Scorer.load(tmp_path, device="cpu")


def test_refuses_pickled_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    model.save_pretrained(tmp_path, safe_serialization=False)
    copy_tokenizer(tiny_model_dir, tmp_path)
    (tmp_path / "model.safetensors").unlink(missing_ok=True)
    if not (tmp_path / "pytorch_model.bin").exists():  # this transformers writes safetensors only
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError):
        Scorer.load(tmp_path, device="cpu")


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
    cpu = Scorer.load(tiny_model_dir, device="cpu").score(TEXTS)
    gpu = Scorer.load(tiny_model_dir, device="cuda").score(TEXTS)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


def test_info_json_describes_the_default_model() -> None:
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    info = orjson.loads(result.stdout)
    assert info["labels"] == LABELS
    assert info["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Path(info["default_model_dir"]) == REPO / "worker" / "default_model"
    assert {"torch", "transformers", "aiokafka", "model", "thresholds"} <= set(info)
    if not info["default_model_trained"]:
        assert "RANDOM" in result.stderr  # the stand-in model is announced, not hidden


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--max-batch-size", "0"], "invalid max_batch_size"),
        (["run", "--device", "tpu"], "invalid device"),
        (["run", "--max-wait-ms", "soon"], "invalid float value"),
        (["info", "--model", "/nonexistent/model"], "cannot load model"),
    ],
)
def test_bad_arguments_get_one_line_and_nonzero_exit(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
