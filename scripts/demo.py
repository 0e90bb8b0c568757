"""`make demo`: an embedded broker, the worker with the default model, real scores printed.

Starts tansu (or uses `KAFKA_BOOTSTRAP_SERVERS`), creates the topics, runs `moderation-worker run`
as a subprocess, produces a dozen sample comments plus one malformed record, reads the scores
back from the output topic, prints them with the worker's key metrics, then stops everything.
A sample whose expected label the model does not flag is printed as a miss, with the reason the
model card gives (the threat sample is one: a known limitation, kept on purpose).
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testing.broker import kafka_broker  # noqa: E402
from testing.http import metric_sum  # noqa: E402
from testing.kafka import comment, produce, read_all  # noqa: E402
from testing.topics import fresh_topics  # noqa: E402
from testing.worker_process import start_worker  # noqa: E402

# (comment, the labels a reader would expect flagged)
EXPECTED: list[tuple[str, tuple[str, ...]]] = [
    ("Thank you for the thoughtful edit, the article reads much better now.", ()),
    ("Could you add a source for the population figure in the second paragraph?", ()),
    ("I disagree with the merge, but I am happy to discuss it on the talk page.", ()),
    ("Welcome to Wikipedia! Let me know if you have any questions.", ()),
    ("The 1987 season summary looks good to me, nice work.", ()),
    ("Please stop removing sourced content without explanation.", ()),
    ("You are a complete idiot and nobody wants you here.", ("toxic", "insult")),
    ("Shut up, you stupid moron, your edits are garbage.", ("toxic", "insult")),
    ("I will find where you live and make you regret this.", ("threat",)),  # missed: see card
    ("What a pathetic loser, go crawl back under your rock.", ("toxic", "insult")),
    ("This is the dumbest fucking thing I have ever read.", ("toxic", "obscene")),
    ("People like you are a disease and should be wiped out.", ("toxic",)),
]
SAMPLES = [text for text, _ in EXPECTED]
MODEL_DIR = REPO / "worker" / "default_model"  # what the demo serves
BAD_RECORD = b'{"id": "broken", "text": '  # cut short: goes to the dead-letter topic


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


def misses(records: list, model_dir: Path = MODEL_DIR) -> list[str]:
    """One line per expected label the model did not flag, with its score, the threshold and
    the reason the model card records (`known_misses`, `label_positive_rates`)."""
    config = orjson.loads((model_dir / "config.json").read_bytes())
    info_file = model_dir / "training_info.json"
    info = orjson.loads(info_file.read_bytes()) if info_file.is_file() else {}
    rates = info.get("label_positive_rates") or {}
    why = {(m["text"], m["label"]): m.get("why", "") for m in info.get("known_misses") or []}
    lines = []
    for record in records:
        message = orjson.loads(record.value)
        text, expected = EXPECTED[int(message["id"][1:])]
        for label in expected:
            if label in message["flagged"]:
                continue
            line = (
                f"missed: {text!r} is a {label}, but scores {message['scores'][label]:.3f} "
                f"(threshold {config['label_thresholds'][label]:.3f})."
            )
            if label in rates:
                line += f" Only {rates[label]:.1%} of the training rows are {label}."
            known = why.get((text, label))
            if known:
                line += f" {known} A known limitation: see Limitations in the model card."
            lines.append(line)
    return lines


async def produce_samples(bootstrap: str, topic: str) -> None:
    messages = [comment(f"s{i}", text) for i, text in enumerate(SAMPLES)]
    await produce(bootstrap, topic, [*messages, (b"broken", BAD_RECORD)])


def main() -> int:
    with kafka_broker() as bootstrap:
        print(f"broker: {bootstrap}")
        topics = fresh_topics(bootstrap, "demo", partitions=1)
        # the bundled default model; the worker's log goes to this terminal
        base = {k: v for k, v in os.environ.items() if k != "MODERATION_MODEL"}
        try:
            worker = start_worker(bootstrap, topics, base=base)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"demo: the worker did not become ready: {exc}") from None
        try:
            asyncio.run(produce_samples(bootstrap, topics.input))
            scores = asyncio.run(read_all(bootstrap, topics.output, len(SAMPLES), timeout=60))
            dead = asyncio.run(read_all(bootstrap, topics.dlq, 1, timeout=30))
            labels = list(orjson.loads(scores[0].value)["scores"])
            model = orjson.loads(scores[0].value)["model"]
            print(f"\nmodel: {model['name']} (version {model['version']})\n")
            print_table(scores, labels)
            missed = misses(scores)
            if missed:
                print()
                for line in missed:
                    print(textwrap.fill(line, width=100, subsequent_indent="  "))
            headers = {k: v.decode() for k, v in dead[0].headers}
            print(f"\ndead letter: key={dead[0].key!r} {headers['error.kind']}: "
                  f"{headers['error.detail']}")  # fmt: skip
            time.sleep(1.5)  # one commit interval, so the metrics include the commits
            body = worker.get("/metrics").body
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
            code = worker.stop()
        print(f"\nworker stopped with exit code {code}")
        return code


if __name__ == "__main__":
    sys.exit(main())
