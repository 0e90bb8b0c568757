"""Where `comments:suggestscore` writes its `Feedback` records: the feedback topic (with Kafka,
through the worker's own producer) or an append-only JSON-lines file (HTTP only). Either way the
request is answered only once the record is safe (acknowledged by the broker, or written and
synced), within `MODERATION_FEEDBACK_TIMEOUT_S`; else `FeedbackUnavailable` (503).

The file holds exactly one `Feedback` JSON object per line (what `moderation-train
feedback-export --file` reads). Each record is one `write` of the whole line on a descriptor
opened with O_APPEND, then `fsync`, on a thread of its own (never on the event loop; records are
written one at a time, in order). A failed or short write is cut back (`ftruncate`) to where the
line began: a line is there whole or not at all. One worker writes one file (the cut-back
assumes no other writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import Feedback
from worker.config import Settings

log = logging.getLogger(__name__)

RECORD_OVERHEAD = 64 * 1024  # a record's bytes beyond its text: id, tenant, labels, ...


class FeedbackUnavailable(Exception):
    """The record was not stored (not acknowledged, not written): the answer is 503. The
    message names the cause, never the record's content."""


class FeedbackSink(Protocol):
    """Stores one record at a time; `write` returns once it is safe."""

    destination: str  # for logs: "topic T" or "file F"

    async def start(self) -> None: ...

    async def write(self, feedback: Feedback) -> None: ...

    async def stop(self) -> None: ...


def encode(feedback: Feedback) -> bytes:
    """A record as one line of JSON (no newline): fields that are None are left out."""
    return feedback.model_dump_json(exclude_none=True).encode()


def _retrieve(done: asyncio.Future[object]) -> None:
    """A shielded wait's future, retrieved once done: after a timeout nobody awaits it, and
    asyncio would log its exception as never retrieved (the answer, 503, already said so)."""
    if not done.cancelled():
        done.exception()


class KafkaFeedback:
    """Records on the feedback topic, keyed by id, through a producer owned elsewhere (the
    worker's: started and stopped with its Kafka side)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, timeout_s: float) -> None:
        self._producer = producer
        self._topic = topic
        self._timeout_s = timeout_s
        self.destination = f"topic {topic}"

    async def start(self) -> None:
        """Nothing: the producer is started with the worker's Kafka side."""

    async def stop(self) -> None:
        """Nothing: the producer is flushed and stopped with the worker's Kafka side."""

    async def write(self, feedback: Feedback) -> None:
        """Send and wait for the broker's acknowledgement (acks=all), at most the timeout. A
        record refused by the producer or the broker is not written; one that was sent and
        not acknowledged in time may still be (a retry then repeats a decision, harmless: the
        last decision on an id wins)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                delivery = await self._producer.send(
                    self._topic, value=encode(feedback), key=feedback.id.encode()
                )
                delivery.add_done_callback(_retrieve)  # its outcome after a timeout, unlogged
                await asyncio.shield(delivery)
        except TimeoutError:
            raise FeedbackUnavailable(
                f"The broker did not acknowledge the decision within {self._timeout_s:g} s."
            ) from None
        except KafkaError as exc:
            raise FeedbackUnavailable(
                f"The broker did not take the decision ({type(exc).__name__})."
            ) from None


class FileFeedback:
    """Records appended to a JSON-lines file (see the module doc)."""

    def __init__(self, path: Path, timeout_s: float, max_record_bytes: int) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._max_record_bytes = max_record_bytes
        self._fd: int | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="feedback-file")
        self.destination = f"file {path}"

    async def start(self) -> None:
        """Open (create) the file for appending; OSError (the worker does not start) when it
        cannot be, or is not a regular file."""
        loop = asyncio.get_running_loop()
        self._fd = await loop.run_in_executor(self._thread, self._open)

    def _open(self) -> int:
        try:
            return self._open_file()
        except OSError as exc:  # the path, not only the errno, in the worker's one fatal line
            raise OSError(f"MODERATION_FEEDBACK_FILE {self._path}: {exc.strerror or exc}") from None

    def _open_file(self) -> int:
        existed = self._path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(self._path, flags, 0o640)  # O_NONBLOCK: a FIFO cannot hang the start
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{self._path} is not a regular file")
        os.set_blocking(fd, True)
        if not existed:  # the new file's name is durable too
            dir_fd = os.open(self._path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return fd

    async def write(self, feedback: Feedback) -> None:
        line = encode(feedback) + b"\n"
        if len(line) > self._max_record_bytes:  # the text limit keeps records below this
            raise FeedbackUnavailable(
                f"The decision's record is {len(line)} bytes, over {self._max_record_bytes}."
            )
        loop = asyncio.get_running_loop()
        try:
            written = loop.run_in_executor(self._thread, self._append, line)
            written.add_done_callback(_retrieve)
            async with asyncio.timeout(self._timeout_s):
                await asyncio.shield(written)
        except TimeoutError:
            raise FeedbackUnavailable(
                f"The decision was not written within {self._timeout_s:g} s."
            ) from None
        except RuntimeError:  # the thread was shut down: the worker is stopping
            raise FeedbackUnavailable("The server is shutting down.") from None

    def _append(self, line: bytes) -> None:
        """(On the file's thread.) One write of the whole line, then fsync; on any failure the
        file is cut back to where the line began."""
        fd = self._fd
        if fd is None:
            raise FeedbackUnavailable("The feedback file is not open.")
        start = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write: {written} of {len(line)} bytes")
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            log.error("feedback file %s: a decision was not written: %s", self._path, exc)
            raise FeedbackUnavailable(
                f"The decision could not be written ({exc.strerror or type(exc).__name__})."
            ) from None

    async def stop(self) -> None:
        """Finish the writes already handed over, then close the file."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._thread.shutdown, True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def feedback_sink(settings: Settings, producer: AIOKafkaProducer | None) -> FeedbackSink | None:
    """Where suggestscore stores decisions: with Kafka (`producer`, the worker's own) the
    feedback topic; HTTP only, `MODERATION_FEEDBACK_FILE`; HTTP only without it, nowhere (501)."""
    if producer is not None:
        if settings.feedback_file is not None:
            log.warning(
                "MODERATION_FEEDBACK_FILE is used with HTTP only; decisions go to topic %s",
                settings.feedback_topic,
            )
        return KafkaFeedback(producer, settings.feedback_topic, settings.feedback_timeout_s)
    if settings.feedback_file is not None:
        # a record is its text JSON-escaped (at most 6 bytes per byte) and a few short fields
        max_record_bytes = 6 * settings.http_api_max_text_bytes + RECORD_OVERHEAD
        return FileFeedback(settings.feedback_file, settings.feedback_timeout_s, max_record_bytes)
    return None
