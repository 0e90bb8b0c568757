"""The intake: fetch, track, decode, tokenize once (and identify the language), queue; pause
when too much is in flight.

With language detection on (`ServedModel.language`), each comment's language is identified (and
compared with the served languages) on the tokenizer thread in the same hop as its tokens, then
judged here, on the loop, against the policy in force, read once per chunk
(`PolicyHolder.current`): a comment in a language the model does not serve follows its tenant's
`unsupported_language` mode (default for Kafka: `score`). `refuse` dead-letters it here
(`unsupported_language`), before the queue, so no forward pass is spent on it; `score` and
`hold` are carried on the record (`InFlight.language`, `.hold`) to the output step
(`encode_output`), which marks the output and, for `hold`, moves its flags to `held`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas import KAFKA_DEFAULT_UNSUPPORTED_LANGUAGE, CommentLanguage, ErrorKind
from schemas import UnsupportedLanguage as Mode
from schemas.artifact import DEFAULT_SERVED_LANGUAGES
from worker.metrics import Metrics
from worker.pipeline.batching import BatchQueue, Tokenized
from worker.pipeline.checkpoint import Checkpoint
from worker.pipeline.decode import InvalidMessage, decode_comment
from worker.pipeline.language import LanguageDetector, comment_language
from worker.pipeline.publish import Publisher
from worker.pipeline.records import InFlight
from worker.pipeline.tokenizer import TextTokenizer
from worker.policy import Policy, PolicyHolder
from worker.tracing import Tracing

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 100
FRONT_DOOR = "kafka"  # the `front_door` label of the language metrics

# token ids and languages (None: detection off) of a chunk, made on the tokenizer thread
Prepared = tuple[list[list[int]], list[CommentLanguage] | None]


@dataclass(frozen=True, slots=True)
class IntakeLimits:
    max_in_flight: int  # pause fetching at this many unacknowledged records, resume at half
    max_poll_records: int
    max_text_bytes: int
    max_in_flight_bytes: int = 67_108_864  # the same, in bytes of those records
    max_metadata_bytes: int = 65_536


def record_size(record: ConsumerRecord) -> int:
    """Bytes a consumed record holds: key, value, header names and values."""
    size = len(record.key or b"") + len(record.value or b"")
    for name, value in record.headers or ():
        size += len(name) + len(value or b"")
    return size


class ConsumeLoop:
    """Takes records from Kafka into the batch queue: fetching pauses at `max_in_flight`
    records or `max_in_flight_bytes` bytes not yet acknowledged, and resumes once both are down
    to half (one fetch may pass the byte bound: the sizes are known only once fetched).

    Tokenization runs on `tokenize_executor` (one thread), one call per fetched chunk, while the
    backend infers on its own thread: batch n+1 is tokenized during batch n by construction.
    With a `detector`, language identification shares that call (see the module).
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        checkpoint: Checkpoint,
        tokenizer: TextTokenizer,
        tokenize_executor: Executor,
        queue: BatchQueue,
        publisher: Publisher,
        metrics: Metrics,
        limits: IntakeLimits,
        tracing: Tracing | None = None,
        *,
        detector: LanguageDetector | None = None,
        served_languages: Sequence[str] = DEFAULT_SERVED_LANGUAGES,
        policies: PolicyHolder | None = None,
    ) -> None:
        self._consumer = consumer
        self._checkpoint = checkpoint
        self._tokenizer = tokenizer
        self._tokenize_executor = tokenize_executor
        self._queue = queue
        self._publisher = publisher
        self._metrics = metrics
        self._limits = limits
        self._tracing = tracing
        self._detector = detector
        self._served_languages = tuple(served_languages)
        self._policies = policies
        self._paused = False
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            room = self._apply_backpressure()
            fetched = await self._consumer.getmany(
                timeout_ms=FETCH_TIMEOUT_MS,
                max_records=max(1, min(room, self._limits.max_poll_records)),
            )
            received, received_wall = time.monotonic(), time.time()
            fetch_wait = self._metrics.stages["fetch_wait"]
            items = []
            for tp, records in fetched.items():
                for record in records:
                    if record.timestamp is not None and record.timestamp > 0:
                        fetch_wait.observe(max(0.0, received_wall - record.timestamp / 1000))
                    if (item := self._admit(tp, record)) is not None:
                        items.append(item)
            if items:
                entries = await self._tokenize(items)
                self._queue.put(entries)
                intake = self._metrics.stages["intake"]
                for entry in entries:
                    intake.observe(entry.enqueued_at - received)

    def _apply_backpressure(self) -> int:
        """Pause all partitions at either limit, resume at half of both; returns the room left
        (in records)."""
        limit, byte_limit = self._limits.max_in_flight, self._limits.max_in_flight_bytes
        in_flight = self._checkpoint.in_flight()
        in_flight_bytes = self._checkpoint.in_flight_bytes()
        if not self._paused and (in_flight >= limit or in_flight_bytes >= byte_limit):
            self._paused = True
            log.debug("pausing: %d messages, %d bytes in flight", in_flight, in_flight_bytes)
        elif self._paused and in_flight <= limit // 2 and in_flight_bytes <= byte_limit // 2:
            self._paused = False
            self._consumer.resume(*self._consumer.assignment())
        if self._paused:  # also covers partitions assigned since the pause began
            self._consumer.pause(*self._consumer.assignment())
        self._metrics.paused.set(1 if self._paused else 0)
        self._metrics.in_flight.set(in_flight)
        self._metrics.in_flight_bytes.set(in_flight_bytes)
        return 0 if in_flight_bytes >= byte_limit else max(0, limit - in_flight)

    def _admit(self, tp: TopicPartition, record: ConsumerRecord) -> InFlight | None:
        """Track and decode one record (synchronously: tracked before a rebalance can
        interleave); a record that cannot be scored is dead-lettered and None returned."""
        self._metrics.consumed.labels(tp.topic).inc()
        ticket = self._checkpoint.track(tp, record.offset, record.timestamp, record_size(record))
        item = InFlight(record=record, ticket=ticket)
        if self._tracing is not None:
            with self._tracing.consume(item):
                return self._decode(item)
        return self._decode(item)

    def _decode(self, item: InFlight) -> InFlight | None:
        try:
            item.comment = decode_comment(
                item.record.value, self._limits.max_text_bytes, self._limits.max_metadata_bytes
            )
        except InvalidMessage as bad:
            self._publisher.dead_letter_soon(item, bad.kind, bad.detail)
            return None
        return item

    async def _tokenize(self, items: list[InFlight]) -> list[Tokenized]:
        """Token ids (and languages) of every item, on the tokenizer thread. If the chunk fails,
        each text is tried alone and the ones the tokenizer refuses are dead-lettered."""
        loop = asyncio.get_running_loop()
        texts = [item.comment.text for item in items if item.comment is not None]
        started = time.perf_counter()
        try:
            ids, languages = await loop.run_in_executor(
                self._tokenize_executor, self._prepare, texts
            )
        except Exception:
            log.exception("tokenizing %d texts failed; retrying one by one", len(texts))
            return await self._one_by_one(items)
        self._metrics.tokenization.observe(time.perf_counter() - started)
        return self._judged(items, ids, languages)

    def _prepare(self, texts: list[str]) -> Prepared:
        """On the tokenizer thread: the texts' token ids and, with a detector, their languages
        as outputs state them (one thread hop for both)."""
        ids = self._tokenizer.encode(texts)
        if self._detector is None:
            return ids, None
        served = self._served_languages
        return ids, [comment_language(d, served) for d in self._detector.detect_all(texts)]

    async def _one_by_one(self, items: list[InFlight]) -> list[Tokenized]:
        """Each item alone; the ones the tokenizer (or detector) fails on are dead-lettered."""
        kept: list[InFlight] = []
        ids: list[list[int]] = []
        languages: list[CommentLanguage] | None = None if self._detector is None else []
        for item in items:
            prepared = await self._prepare_one(item)
            if prepared is not None:
                kept.append(item)
                ids += prepared[0]
                if languages is not None and prepared[1] is not None:
                    languages += prepared[1]
        return self._judged(kept, ids, languages)

    async def _prepare_one(self, item: InFlight) -> Prepared | None:
        assert item.comment is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._tokenize_executor, self._prepare, [item.comment.text]
            )
        except Exception as exc:
            self._metrics.errors.labels("inference").inc()
            which = "tokenizer" if self._detector is None else "tokenizer or language detector"
            await self._publisher.send_dead_letter(
                item, ErrorKind.INFERENCE_FAILED, f"the {which} failed on this text: {exc!r}"
            )
            return None

    def _judged(
        self,
        items: list[InFlight],
        ids: list[list[int]],
        languages: list[CommentLanguage] | None,
    ) -> list[Tokenized]:
        """The entries to queue. With languages: each item's language is set and counted, and
        one in a language the model does not serve follows its tenant's mode under the policy in
        force (read once here): `refuse` is dead-lettered now, `hold` marked for the output."""
        if languages is None:
            return [Tokenized(item, seq) for item, seq in zip(items, ids, strict=True)]
        policy = self._policies.current.primary if self._policies is not None else None
        served = self._served_languages
        counted: Counter[str] = Counter()
        modes: Counter[Mode] = Counter()
        queued = []
        for item, seq, language in zip(items, ids, languages, strict=True):
            item.language = language
            counted[language.code] += 1
            if not language.supported:
                mode = language_mode(policy, item)
                modes[mode] += 1
                if mode is Mode.REFUSE:
                    detail = refusal(language, served, policy)
                    self._publisher.dead_letter_soon(item, ErrorKind.UNSUPPORTED_LANGUAGE, detail)
                    continue
                item.hold = mode is Mode.HOLD
            queued.append(Tokenized(item, seq))
        for code, count in counted.items():
            self._metrics.count_language(FRONT_DOOR, code, served, count)
        for mode, count in modes.items():
            self._metrics.count_unsupported(FRONT_DOOR, mode, count)
        return queued


def language_mode(policy: Policy | None, item: InFlight) -> Mode:
    """The item's tenant's mode for a language the model does not serve (Kafka's default:
    `score`)."""
    if policy is None:
        return KAFKA_DEFAULT_UNSUPPORTED_LANGUAGE
    return policy.language_mode(policy.source.tenant_of(item), KAFKA_DEFAULT_UNSUPPORTED_LANGUAGE)


def refusal(language: CommentLanguage, served: tuple[str, ...], policy: Policy | None) -> str:
    """The dead letter's detail: the language, the served ones, the policy that refused it."""
    version = f"policy {policy.version}" if policy is not None else "the default policy"
    return (
        f"the comment's language is {language.code} (confidence {language.confidence:.2f}), "
        f"which the model does not serve (it serves {', '.join(served)}); {version} refuses "
        "unsupported languages for its tenant (`unsupported_language: refuse`)"
    )
