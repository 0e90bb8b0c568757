"""The benchmark: its profile summary, and a quick run of `python -m bench` on a real broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.profile import categorize, summarize
from bench.report import _torch_paragraph, _torch_row
from bench.runner import _torch_ceiling, torch_baseline, torch_baseline_skip
from bench.stages import StageLog
from bench.variants import plan_variants
from testing.worker_process import REPO_ROOT as REPO
from training.onnx_export import export_onnx, quantize_int8
from worker.backends.hardware import Choice, CpuInfo, read_cpu
from worker.backends.runtime import Runtime, onnxruntime_installed, openvino_installed
from worker.config import Settings

TEXTS = [
    "ok",
    "a much longer comment about the history of the river " * 30,
    "You are a complete idiot and everybody here knows it, go away now.",
    "short one",
    "medium length comment, nothing special in it at all",
]


def test_profile_summary_categorizes_py_spy_stacks(tmp_path: Path) -> None:
    raw = tmp_path / "profile.raw.txt"
    raw.write_text(
        "thread (0x1);_tokenize (worker/pipeline/consume.py:60);"
        "encode (worker/pipeline/tokenizer.py:70);"
        "encode_batch_fast (tokenizers/__init__.py:1) 3\n"
        "thread (0x1);_infer (worker/pipeline/inference.py:60);"
        "infer (worker/backends/torch_backend.py:110);"
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
    # served by ONNX Runtime int8 (what `auto` picks on many CPUs), with torch timed beside it
    tiny_model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    quantize_int8(export_onnx(tiny_model_dir))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MODERATION_MODEL": str(tiny_model_dir),
        "MODERATION_DEVICE": "cpu",
        "MODERATION_BACKEND": "onnx",
        "MODERATION_INFERENCE_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--messages", "300",
         "--corpus", str(corpus), "--output-dir", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=340,
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
    compared = report["variants"]
    assert {"torch fp32", "torch int8", "onnx fp32"} <= set(compared["variants"])
    assert compared["variants"]["torch fp32"]["vs_torch_fp32"] == 1.0
    assert all(v["comments_per_s"] > 0 for v in compared["variants"].values())
    native_bf16 = bool(read_cpu().native_bf16)
    assert ("torch bf16" in compared["variants"]) == native_bf16
    assert ("torch bf16" in compared["skipped"]) != native_bf16
    if openvino_installed():  # it reads the fp32 graph the variants export
        assert "openvino fp32" in compared["variants"]
        assert ("openvino bf16" in compared["variants"]) == native_bf16
    shadow = report["shadow"]  # (b) again with a shadow (the same tiny model) attached
    assert (REPO / shadow["shadow_model"]).resolve() == tiny_model_dir.resolve()
    assert shadow["with_comments_per_s"] > 0 and len(shadow["runs"]) == 1
    assert shadow["without_comments_per_s"] == report["end_to_end"]["comments_per_s"]
    assert shadow["run"]["distinct_outputs"] == 300
    covered = shadow["shadow"]
    assert covered["failures"] == 0 and covered["scored"] + covered["dropped"] <= 300
    assert covered["scored"] > 0
    assert report["end_to_end"]["shadow"] is None
    language = report["language"]  # (b) again with language detection off (it is on by default)
    assert report["settings_worker"]["language_detection"] is True
    assert language["flipped_to"] == "off" and len(language["flipped_runs"]) == 1
    assert language["on_comments_per_s"] == report["end_to_end"]["comments_per_s"]
    assert language["off_comments_per_s"] == language["run"]["comments_per_s"] > 0
    assert language["run"]["distinct_outputs"] == 300
    assert language["throughput_cost"] == 1 - (
        language["on_comments_per_s"] / language["off_comments_per_s"]
    )
    torch = report["torch_baseline"]  # (a) and (b) once more with the torch backend
    torch_stages = ["(a) model-only ceiling, torch", "(b) worker end to end, torch"]
    assert torch["skipped"] is None and torch["served"] == "onnx int8"
    assert torch["precision"] == ("bf16" if read_cpu().native_bf16 else "fp32")  # auto's rule
    for figure, served in (("a", report["ceiling"]), ("b", report["end_to_end"])):
        assert torch[f"{figure}_comments_per_s"] > 0 and len(torch["runs"][figure]) == 1
        assert torch["over_torch"][figure] == (
            served["comments_per_s"] / torch[f"{figure}_comments_per_s"]
        )
    assert torch["b_distinct_outputs"] == 300
    assert (out / "worker-saturation-torch.log").exists()
    startup = report["end_to_end"]["startup_s"]
    assert {"imports", "model_load", "warm_up", "kafka_join", "ready_minus_join"} <= set(startup)
    assert 0 < startup["ready_minus_join"] < sum(startup.values())
    assert set(report["runtime"]) == {"backend", "device", "precision", "threads", "cpu"}
    assert "profile" in report
    http = report["http_api"]
    assert set(http) == {"batched", "one_at_a_time"}
    assert http["one_at_a_time"]["max_batch_size"] == 1
    for mode in http.values():
        assert [level["clients"] for level in mode["levels"]] == [1, 16, 256]
        for level in mode["levels"]:
            assert level["statuses"] == {"200": level["requests"]}
            assert level["requests"] >= max(100, 4 * level["clients"])
            assert level["requests_per_s"] > 0 and 0 < level["p50_ms"] <= level["p99_ms"]
    assert all(level["mean_batch_size"] == 1 for level in http["one_at_a_time"]["levels"])
    assert http["batched"]["levels"][-1]["mean_batch_size"] > 1  # 256 clients share batches
    noise = report["noise"]  # steal, load and other processes over every stage, in order
    stages = [s["stage"] for s in noise["stages"]]
    assert stages == [
        "set-up: corpus, model", "(a) probe: the rate that sizes the runs",
        "(a) model-only ceiling, run 1", "(a) model-only ceiling, torch",
        "(b) worker end to end, run 1", "(b) worker end to end, torch",
        "(b) with a shadow model, run 1",
        "(b) with language detection off, run 1",
        "single comment", "(b) latency at half load",
        "(c) naive consumer", "(d) HTTP API", "backends and precisions",
    ]  # fmt: skip
    for s in noise["stages"]:
        assert s["seconds"] >= 0 and s["load1_start"] is not None
        if Path("/proc/stat").exists() and s["seconds"] >= 1:  # the kernel counts in 10 ms ticks
            assert 0 <= s["steal_pct"] <= s["steal_pct"] + s["busy_pct"] <= 100.1
            assert s["noisy"] == (s["steal_pct"] > noise["noisy_steal_pct"])
    assert noise["noisy_stages"] == [s["stage"] for s in noise["stages"] if s["noisy"]]
    by_name = {s.pop("stage"): s for s in noise["stages"]}
    for figure, name in {
        "ceiling": "(a) model-only ceiling, run 1", "end_to_end": "(b) worker end to end, run 1",
        "latency": "(b) latency at half load", "single_comment": "single comment",
        "naive": "(c) naive consumer", "variants": "backends and precisions",
    }.items():  # fmt: skip
        assert report[figure]["noise"] == by_name[name]  # beside the figure it was taken over
    assert report["shadow"]["run"]["noise"] == by_name["(b) with a shadow model, run 1"]
    assert language["run"]["noise"] == by_name["(b) with language detection off, run 1"]
    for figure, name in zip("ab", torch_stages, strict=True):
        assert torch["noise"][figure] == by_name[name]
    assert {"cpu_flags", "usable_cpus", "cgroup_cpu_quota"} <= set(report["machine"])
    assert report["probe"]["messages"] == 300 and report["probe"]["comments_per_s"] > 0
    # the latency budget: every scored comment passed each stage once, and the stages the
    # bench's clock covers add up to what it measured (means; ms resolution of timestamps)
    budget = report["latency"]["budget"]
    received = report["latency"]["received"]
    assert list(budget["stages"]) == [
        "generator", "fetch_wait", "intake", "queue_wait", "forward", "publish", "ack",
    ]  # fmt: skip
    for stage, row in budget["stages"].items():
        assert row["count"] == received, stage
        assert row["mean_ms"] >= 0, stage
    assert budget["stages"]["forward"]["mean_ms"] > 0
    assert abs(budget["unaccounted_ms"]) <= 3.0, budget  # ms-truncated timestamps: ~1 ms
    # where the CPU went over the stage: the worker scored every comment, the bench sent them
    cpu = report["latency"]["cpu"]
    assert cpu["worker"] > 0 and cpu["bench"] > 0, cpu
    assert cpu["busy"] >= cpu["worker"] + cpu["bench"] - 0.05, cpu  # ticks: 10 ms each
    markdown = (out / "REPORT.md").read_text()
    assert "**Latency budget at half load**" in markdown and "| queue_wait | " in markdown
    assert f"CPU over the latency stage, in CPUs: worker {cpu['worker']:,.2f}" in markdown
    assert "## Machine noise per stage" in markdown and "300-comment probe measured" in markdown
    assert "with language detection off (`MODERATION_LANGUAGE_DETECTION`)" in markdown
    for name in stages:
        assert f"| {name} | " in markdown
    assert "usable CPUs" in markdown and "cgroup CPU quota" in markdown
    assert f"| (a) model-only, torch ({torch['precision']}; " in markdown
    assert f"| (b) end to end, torch ({torch['precision']}; " in markdown
    assert f"**{torch['over_torch']['b']:.2f}x**" in markdown
    needles = ("(a) model-only", "(b) worker end to end", "(c) naive", "b/a", "p99", "Single")
    for needle in (
        *needles,
        "Backends and precisions",
        "Start-up",
        "Chosen at start",
        "Shadow",
        "(d)",
    ):
        assert needle in markdown


def test_torch_baseline_skips_with_a_reason_and_divides_served_by_torch() -> None:
    assert torch_baseline_skip(True, "onnx", installed=True) is None
    assert "--no-torch-baseline" in str(torch_baseline_skip(False, "onnx", installed=True))
    assert "already torch" in str(torch_baseline_skip(True, "torch", installed=True))
    assert "not installed" in str(torch_baseline_skip(True, "openvino", installed=False))
    a, b = {"comments_per_s": 3000.0}, {"comments_per_s": 2000.0}
    a_torch = {"comments_per_s": 1500.0, "noise": {"steal_pct": 1.0}}
    b_torch = {"comments_per_s": 1600.0, "noise": None, "distinct_outputs": 300}
    result = torch_baseline("onnx int8", a, b, a_torch, b_torch, "bf16")
    assert result["over_torch"] == {"a": 2.0, "b": 1.25}
    assert result["runs"] == {"a": [1500.0], "b": [1600.0]}
    assert result["noise"] == {"a": {"steal_pct": 1.0}, "b": None}
    assert result["skipped"] is None and result["precision"] == "bf16"
    assert _torch_row(result, "b")[0].startswith("| (b) end to end, torch (bf16; one run")
    assert "**2.00x**" in _torch_paragraph(result)[0]
    skipped = {"skipped": torch_baseline_skip(True, "torch", installed=True)}
    assert _torch_row(skipped, "a") == []
    assert _torch_paragraph(skipped)[0].startswith("Torch baseline: skipped, the served backend")


def test_torch_ceiling_gives_torch_its_threads_back(tiny_model_dir: Path) -> None:
    """(c), the naive consumer, runs torch in the bench process after the torch (a) run: that
    run's model (1 thread here) must not leave torch on its thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        settings = Settings(
            model=str(tiny_model_dir), backend="torch", device="cpu", inference_threads=1
        )
        stages = StageLog()
        result, precision = _torch_ceiling(settings, TEXTS * 4, stages)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert result["comments_per_s"] > 0 and precision in {"fp32", "bf16"}
    (stage,) = stages.stages
    assert stage.pop("stage") == "(a) model-only ceiling, torch" and result["noise"] == stage


@pytest.mark.parametrize("flags", [{"avx2"}, {"avx2", "avx512_bf16"}])
def test_variants_plan_openvino_on_the_fp32_graph(tmp_path: Path, flags: set[str]) -> None:
    # `make test` installs both (the dev extra): without them this is a failure, not a skip
    assert openvino_installed() and onnxruntime_installed(), "needs the onnx and openvino extras"
    cpu = CpuInfo("Test CPU", frozenset(flags))
    runtime = Runtime(
        Choice("torch", ""), Choice("cpu", ""), Choice("fp32", ""), Choice(1, ""), cpu
    )
    planned, skipped = plan_variants(runtime, tmp_path)
    assert ("openvino", "fp32") not in planned
    assert "model.onnx" in skipped["openvino"]
    (tmp_path / "model.onnx").write_bytes(b"graph")
    planned, skipped = plan_variants(runtime, tmp_path)
    assert ("openvino", "fp32") in planned
    assert (("openvino", "bf16") in planned) == ("avx512_bf16" in flags)
    assert ("openvino bf16" in skipped) != ("avx512_bf16" in flags)
