"""Length bucketing, precision modes, and the benchmark's smoke run against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bench.profile import categorize, summarize
from testing.kafka import comment, produce, read_all
from testing.topics import Topics
from testing.worker_process import REPO_ROOT as REPO
from tests.worker.test_in_process import FailsOnPoison, settings_for
from worker.app import Worker
from worker.infer import ModelLoadError, Scorer, length_buckets

TEXTS = [
    "ok",
    "a much longer comment about the history of the river " * 30,
    "You are a complete idiot and everybody here knows it, go away now.",
    "",
    "short one",
    "Ünïcödé 🎉 " * 20,
    "medium length comment, nothing special in it at all",
]


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=128), max_size=80),
    budget=st.integers(min_value=0, max_value=4096),
)
def test_buckets_partition_the_batch_within_the_token_budget(lengths: list[int], budget: int):
    buckets = length_buckets(lengths, budget)
    flat = [i for bucket in buckets for i in bucket]
    assert sorted(flat) == list(range(len(lengths)))  # every item exactly once
    if not lengths:
        assert buckets == []
        return
    if budget <= 0:
        assert buckets == [list(range(len(lengths)))]
        return
    for bucket in buckets:
        assert bucket
        padded = len(bucket) * max(lengths[i] for i in bucket)
        assert padded <= budget or len(bucket) == 1
    in_order = [lengths[i] for i in flat]
    assert in_order == sorted(in_order)  # shortest first, so each bucket pads little


def test_buckets_split_short_from_long() -> None:
    assert length_buckets([100, 5, 100, 5], 200) == [[1, 3], [0, 2]]
    assert length_buckets([3, 1, 2], 0) == [[0, 1, 2]]


@pytest.fixture(scope="module")
def fp32(tiny_model_dir: Path) -> Scorer:
    return Scorer.load(tiny_model_dir, device="cpu", max_length=64)


def test_bucketed_scores_equal_one_padded_batch_in_the_original_order(
    tiny_model_dir: Path, fp32: Scorer
) -> None:
    bucketed = Scorer.load(tiny_model_dir, device="cpu", max_length=64, token_budget=64)
    assert len(bucketed.tokenize_buckets(TEXTS)) > 1
    expected = np.vstack([fp32.score([text]) for text in TEXTS])
    np.testing.assert_allclose(bucketed.score(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(fp32.score(TEXTS), expected, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_stays_close_to_fp32(
    tiny_model_dir: Path, fp32: Scorer, precision: str
) -> None:
    reduced = Scorer.load(tiny_model_dir, device="cpu", max_length=64, precision=precision)
    scores = reduced.score(TEXTS)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, fp32.score(TEXTS), atol=0.05)


def test_fp16_needs_cuda_and_unknown_precision_is_refused(tiny_model_dir: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="fp16 needs a CUDA device"):
            Scorer.load(tiny_model_dir, device="cpu", precision="fp16")
    with pytest.raises(ModelLoadError, match="unknown precision"):
        Scorer.load(tiny_model_dir, device="cpu", precision="fp8")


def test_profile_summary_categorizes_py_spy_stacks(tmp_path: Path) -> None:
    raw = tmp_path / "profile.raw.txt"
    raw.write_text(
        "thread (0x1);run (worker/scoring.py:60);tokenize (worker/infer.py:200);"
        "__call__ (transformers/tokenization_utils_base.py:1) 3\n"
        "thread (0x1);run (worker/scoring.py:60);infer (worker/infer.py:210);"
        "forward (torch/nn/modules/linear.py:134) 6\n"
        "thread (0x2);run_forever (asyncio/base_events.py:600);"
        "select (selectors.py:468) 1\n"
    )
    summary = summarize(raw)
    assert summary["samples"] == 10
    shares = {row["name"]: row["share"] for row in summary["categories"]}
    assert shares == {"model forward (torch)": 0.6, "tokenization": 0.3, "asyncio event loop": 0.1}
    assert categorize(["main (x.py:1)"]) == "other"
    assert summarize(tmp_path / "missing.txt")["samples"] == 0


@pytest.mark.integration
def test_bench_quick_writes_every_figure(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("id,comment_text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MODERATION_MODEL": str(tiny_model_dir),
        "MODERATION_DEVICE": "cpu",
        "MODERATION_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "worker", "bench", "--quick", "--messages", "300",
         "--corpus", str(corpus), "--output-dir", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = orjson.loads((out / "bench.json").read_bytes())
    for figure in ("ceiling", "end_to_end", "naive"):
        assert report[figure]["comments_per_s"] > 0
    assert report["end_to_end"]["messages"] == 300
    assert report["end_to_end"]["distinct_outputs"] == 300
    assert report["latency"]["received"] == report["latency"]["messages"]
    assert 0 < report["latency"]["p50_ms"] <= report["latency"]["p95_ms"]
    assert report["latency"]["p95_ms"] <= report["latency"]["p99_ms"]
    single = report["single_comment"]
    assert single["comments"] == report["corpus"]["unique_texts"] > 0
    assert 0 < single["p50_ms"] <= single["p99_ms"]
    assert set(report["ratios"]) == {"b_over_a", "b_over_c"}
    assert {"cpu", "cores", "torch", "transformers", "device"} <= set(report["machine"])
    assert report["settings_worker"]["model"] == str(tiny_model_dir)
    assert set(report["precision"]["variants"]) == {"fp32", "bf16", "int8"}
    assert "profile" in report
    markdown = (out / "REPORT.md").read_text()
    for needle in ("(a) model-only", "(b) worker end to end", "(c) naive", "b/a", "p99", "Single"):
        assert needle in markdown


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (lent device only)")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_precisions_with_pinned_buckets_match_cpu(
    tiny_model_dir: Path, fp32: Scorer, precision: str
) -> None:
    gpu = Scorer.load(
        tiny_model_dir, device="cuda", max_length=64, precision=precision, token_budget=64
    )
    buckets = gpu.tokenize_buckets(TEXTS)
    assert all(enc["input_ids"].is_pinned() for _, enc in buckets)
    tolerance = 1e-4 if precision == "fp32" else 0.05
    np.testing.assert_allclose(gpu.score(TEXTS), fp32.score(TEXTS), atol=tolerance)


def test_cpu_buckets_stay_in_ordinary_memory(fp32: Scorer) -> None:
    for _, encoding in fp32.tokenize_buckets(TEXTS):  # pinning is for copies to a GPU only
        assert encoding["input_ids"].device.type == "cpu"
        assert not encoding["input_ids"].is_pinned()


@pytest.mark.integration
async def test_overlapped_tokenization_scores_everything_in_order_and_recovers(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    """The two-stage pipeline (tokenize n+1 while n is inferred): every comment scored with the
    scores of the plain path, a batch whose tokenization fails retried one by one."""
    base = Scorer.load(tiny_model_dir, device="cpu")
    scorer = FailsOnPoison(base.model, base.tokenizer, base.device, base.name, base.version)
    texts = {f"m{i}": TEXTS[i % len(TEXTS)] + f" {i}" for i in range(40)}
    messages = [comment(key, text) for key, text in texts.items()]
    messages.insert(17, comment("poison", "this one is POISON"))
    await produce(kafka_bootstrap, topics.input, messages)
    settings = settings_for(kafka_bootstrap, topics, max_batch_size=8, overlap_tokenization=True)
    worker = Worker(settings, scorer=scorer)
    running = asyncio.create_task(worker.run())
    outputs = await read_all(kafka_bootstrap, topics.output, len(texts), settle=0.5)
    dead = await read_all(kafka_bootstrap, topics.dlq, 1, settle=0.5)
    worker.request_stop()
    assert await asyncio.wait_for(running, 30) == 0
    assert worker.tokenize_executor is not None  # the pipelined path really ran
    scored = {record.key.decode(): orjson.loads(record.value)["scores"] for record in outputs}
    assert sorted(scored) == sorted(texts)
    expected = base.score(list(texts.values()))
    for row, key in zip(expected, texts, strict=True):
        np.testing.assert_allclose([scored[key][label] for label in base.labels], row, atol=1e-5)
    assert [record.key for record in dead] == [b"poison"]
