"""`make demo`: an embedded broker, the worker with the default model, real scores printed.

Starts tansu (or uses `KAFKA_BOOTSTRAP_SERVERS`), creates the topics, runs `moderation-worker run`
as a subprocess, produces a dozen sample comments plus one malformed record, reads the scores
back from the output topic, prints them with the worker's key metrics, then stops everything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.broker import free_port, kafka_broker  # noqa: E402
from tests.http import http_get, metric_sum  # noqa: E402
from tests.kafka_helpers import create_topics, produce, read_all  # noqa: E402

SAMPLES = [
    "Thank you for the thoughtful edit, the article reads much better now.",
    "Could you add a source for the population figure in the second paragraph?",
    "I disagree with the merge, but I am happy to discuss it on the talk page.",
    "Welcome to Wikipedia! Let me know if you have any questions.",
    "The 1987 season summary looks good to me, nice work.",
    "Please stop removing sourced content without explanation.",
    "You are a complete idiot and nobody wants you here.",
    "Shut up, you stupid moron, your edits are garbage.",
    "I will find where you live and make you regret this.",
    "What a pathetic loser, go crawl back under your rock.",
    "This is the dumbest fucking thing I have ever read.",
    "People like you are a disease and should be wiped out.",
]
BAD_RECORD = b'{"id": "broken", "text": '  # cut short: goes to the dead-letter topic


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the worker exited with {proc.returncode}")
        try:
            if http_get(url + "/readyz").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("demo: the worker did not become ready")


def print_table(records: list, labels: list[str]) -> None:
    texts = dict(enumerate(SAMPLES))
    header = f"{'comment':<46} " + " ".join(f"{label[:8]:>8}" for label in labels) + "  flagged"
    print(header)
    print("-" * len(header))
    rows = sorted((orjson.loads(r.value) for r in records), key=lambda m: int(m["id"][1:]))
    for message in rows:
        text = texts[int(message["id"][1:])]
        shown = text if len(text) <= 45 else text[:44] + "…"
        scores = " ".join(f"{message['scores'][label]:8.3f}" for label in labels)
        print(f"{shown:<46} {scores}  {','.join(message['flagged']) or '-'}")


async def produce_samples(bootstrap: str, topic: str) -> None:
    messages = [
        (f"s{i}".encode(), orjson.dumps({"id": f"s{i}", "text": text}))
        for i, text in enumerate(SAMPLES)
    ]
    await produce(bootstrap, topic, [*messages, (b"broken", BAD_RECORD)])


def main() -> int:
    run = uuid.uuid4().hex[:6]
    topics = {"input": f"comments-{run}", "output": f"comment-scores-{run}", "dlq": f"dlq-{run}"}
    with kafka_broker() as bootstrap:
        print(f"broker: {bootstrap}")
        asyncio.run(create_topics(bootstrap, {name: 1 for name in topics.values()}))
        port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MODERATION_INPUT_TOPIC": topics["input"],
            "MODERATION_OUTPUT_TOPIC": topics["output"],
            "MODERATION_DLQ_TOPIC": topics["dlq"],
            "MODERATION_GROUP_ID": f"demo-{run}",
            "MODERATION_METRICS_HOST": "127.0.0.1",
            "MODERATION_METRICS_PORT": str(port),
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("MODERATION_MODEL", None)  # the bundled default model
        worker = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, cwd=REPO)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, worker)
            asyncio.run(produce_samples(bootstrap, topics["input"]))
            scores = asyncio.run(read_all(bootstrap, topics["output"], len(SAMPLES), timeout=60))
            dead = asyncio.run(read_all(bootstrap, topics["dlq"], 1, timeout=30))
            labels = list(orjson.loads(scores[0].value)["scores"])
            model = orjson.loads(scores[0].value)["model"]
            print(f"\nmodel: {model['name']} (version {model['version']})\n")
            print_table(scores, labels)
            headers = {k: v.decode() for k, v in dead[0].headers}
            print(f"\ndead letter: key={dead[0].key!r} {headers['error.kind']}: "
                  f"{headers['error.detail']}")  # fmt: skip
            time.sleep(1.5)  # one commit interval, so the metrics include the commits
            body = http_get(url + "/metrics").body
            m = {
                name: metric_sum(body, f"moderation_{name}")
                for name in (
                    "messages_consumed_total", "messages_scored_total",
                    "messages_dead_lettered_total", "commits_total", "batch_size_count",
                    "inference_seconds_sum", "end_to_end_latency_seconds_count",
                    "end_to_end_latency_seconds_sum",
                )
            }  # fmt: skip
            batches = m["batch_size_count"]
            inference_ms = 1000 * m["inference_seconds_sum"] / max(1, batches)
            latency_ms = (
                1000
                * m["end_to_end_latency_seconds_sum"]
                / max(1, m["end_to_end_latency_seconds_count"])
            )
            print("\nmetrics:")
            print(f"  consumed {m['messages_consumed_total']:.0f}, "
                  f"scored {m['messages_scored_total']:.0f}, "
                  f"dead-lettered {m['messages_dead_lettered_total']:.0f}, "
                  f"commits {m['commits_total']:.0f}")  # fmt: skip
            print(f"  batches {batches:.0f}, mean inference {inference_ms:.1f} ms/batch, "
                  f"mean end-to-end latency {latency_ms:.1f} ms")  # fmt: skip
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
        print(f"\nworker stopped with exit code {code}")
        return code


if __name__ == "__main__":
    sys.exit(main())
