"""Where the worker's time goes: a summary of py-spy's raw (collapsed-stack) samples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

# (category, substrings of a frame's "function (file:line)"); the frame nearest the leaf that
# matches any rule decides the sample's category, so a tokenizer call inside a worker
# function counts as tokenization.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("tokenization", ("tokenizers", "worker/pipeline/tokenizer.py")),
    (
        "model forward (torch)",
        ("torch/", "transformers/models", "worker/backends/torch_backend.py"),
    ),
    ("kafka client (aiokafka)", ("aiokafka/",)),
    ("decode (orjson + pydantic)", ("worker/pipeline/decode.py",)),
    (
        "publish + offsets",
        ("worker/pipeline/publish.py", "worker/pipeline/checkpoint.py", "pydantic"),
    ),
    (
        "metrics + HTTP",
        ("prometheus_client", "aiohttp", "worker/http/health.py", "worker/metrics.py"),
    ),
    (
        "batching + intake + inference loop",
        (
            "worker/pipeline/batching.py",
            "worker/pipeline/consume.py",
            "worker/pipeline/inference.py",
            "worker/backends/model.py",
        ),
    ),
    ("asyncio event loop", ("asyncio/", "selectors.py", "uvloop")),
]


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]


def categorize(frames: list[str]) -> str:
    for frame in reversed(frames):
        for category, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return category
    return "other"


def summarize(raw_path: Path, top: int = 12) -> dict[str, Any]:
    """Shares of the sampled (non-idle) time by category, and the hottest functions."""
    if not raw_path.is_file() or raw_path.stat().st_size == 0:
        return {"samples": 0, "note": f"no py-spy samples in {raw_path}"}
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        thread = next((f for f in stack.split(";") if f.startswith("thread ")), "thread ?")
        threads[thread] += count
        frames = _frames(stack)
        if not frames:
            continue
        categories[categorize(frames)] += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            if "worker/" in frame:
                inclusive[frame] += count

    def shares(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        top = counter.most_common(n)
        return [{"name": name, "share": round(count / total, 4)} for name, count in top]

    return {
        "samples": total,
        "categories": shares(categories, len(categories)),
        "threads": shares(threads, 8),
        "top_self": shares(leaves, top),
        "top_worker_inclusive": shares(inclusive, top),
    }
