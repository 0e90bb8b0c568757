"""The one seam between the two front doors: Kafka records (`InFlight`) and HTTP texts (`Reply`)
share a batch of the inference loop; a record is published, a reply gets its row, and a text
the backend fails on alone fails only its own reply."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from schemas import Comment
from testing.queues import reader_has_looked
from testing.wait import wait_until_async
from worker.backends.backend import Backend
from worker.backends.model import ServedModel, load_served_model
from worker.metrics import Metrics
from worker.pipeline.batching import BatchQueue, Tokenized
from worker.pipeline.checkpoint import PartitionOffsets, Ticket
from worker.pipeline.inference import InferenceLoop
from worker.pipeline.records import InFlight, Reply


class RecordingPublisher:
    def __init__(self) -> None:
        self.outputs: list[tuple[InFlight, bytes]] = []
        self.dead: list[tuple[InFlight, Any]] = []

    async def send_output(
        self, item: InFlight, value: bytes, probabilities: Any = None, policy_version: str = ""
    ) -> None:
        self.outputs.append((item, value))

    async def send_dead_letter(self, item: InFlight, kind: Any, detail: str) -> None:
        self.dead.append((item, kind))


class CountingBackend(Backend):
    """The real backend; counts forward passes, fails on a pass holding `poison_id`."""

    def __init__(self, real: Any, poison_id: int) -> None:
        self.real, self.poison_id = real, poison_id
        self.passes: list[int] = []  # rows of each forward pass
        self.kind, self.device, self.precision = real.kind, real.device, real.precision
        self.labels = real.labels

    def warm_up(self, shapes: Any) -> None:
        self.real.warm_up(shapes)

    def infer(self, batch: Any) -> np.ndarray:
        self.passes.append(len(batch))
        if (batch.input_ids == self.poison_id).any():
            raise RuntimeError("simulated kernel failure")
        return self.real.infer(batch)


def kafka_item(offset: int, text: str) -> InFlight:
    record = ConsumerRecord("in", 0, offset, 0, 0, b"k", b"v", None, 1, 1, [])
    ticket = Ticket(PartitionOffsets(), offset)
    return InFlight(record, ticket, Comment(id=f"c{offset}", text=text))


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> ServedModel:
    return load_served_model(tiny_model_dir, device="cpu", precision="fp32")


async def test_records_and_replies_share_one_forward_pass(model: ServedModel) -> None:
    [[*_, poison_id, _]] = model.tokenizer.encode(["poison"])
    backend = CountingBackend(model.backend, poison_id)
    served = dataclasses.replace(model, backend=backend, token_budget=0)  # one pass per batch
    texts = ["you are an idiot", "thanks for the fix", "what a nice day", "poison"]
    ids = model.tokenizer.encode(texts)
    queue = BatchQueue(max_batch_size=64)
    records = [kafka_item(0, texts[0]), kafka_item(1, texts[1])]
    replies = [Reply(), Reply()]
    queue.put([Tokenized(item, seq) for item, seq in zip(records + replies, ids, strict=True)])
    queue.close()
    publisher = RecordingPublisher()
    with ThreadPoolExecutor(1) as executor:
        loop = InferenceLoop(queue, served, executor, publisher, Metrics())  # type: ignore[arg-type]
        await asyncio.wait_for(loop.run(), 30)

    alone = model.score(texts)
    assert [item for item, _ in publisher.outputs] == records  # Kafka: published, in order
    for (_, value), expected in zip(publisher.outputs, alone[:2], strict=True):
        scores = orjson.loads(value)["scores"]
        np.testing.assert_allclose(list(scores.values()), expected, atol=1e-5)
    np.testing.assert_allclose(replies[0].future.result(), alone[2], atol=1e-5)  # HTTP: its row
    with pytest.raises(RuntimeError, match="simulated"):  # the poisoned text fails alone
        replies[1].future.result()
    assert publisher.dead == []  # a failed HTTP text is never dead-lettered
    # the first pass held all four; bisection: [0, 1] ok, [2, 3] fails, [2] ok, [3] fails alone
    assert backend.passes == [4, 2, 2, 1, 1]


class GatedBackend(CountingBackend):
    """The real backend; its first forward pass waits until the test opens the gate."""

    def __init__(self, real: Any) -> None:
        super().__init__(real, poison_id=-1)
        self.entered, self.gate = threading.Event(), threading.Event()

    def infer(self, batch: Any) -> np.ndarray:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(30)
        return super().infer(batch)


class CountingExecutor(ThreadPoolExecutor):
    """One thread; counts the batches handed to it."""

    def __init__(self) -> None:
        super().__init__(1)
        self.submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(*args, **kwargs)


async def test_a_full_batch_goes_to_the_backend_while_the_one_before_is_scored(
    model: ServedModel,
) -> None:
    """The thread goes from one full batch to the next without waiting for the event loop; a
    partial batch still waits until the backend is free (latency first), and order holds."""
    backend = GatedBackend(model.backend)
    served = dataclasses.replace(model, backend=backend, token_budget=0)
    texts = [f"comment number {i}" for i in range(7)]
    entries = [
        Tokenized(kafka_item(i, text), ids)
        for i, (text, ids) in enumerate(zip(texts, model.tokenizer.encode(texts), strict=True))
    ]
    queue = BatchQueue(max_batch_size=3)
    publisher = RecordingPublisher()
    with CountingExecutor() as executor:
        loop = InferenceLoop(queue, served, executor, publisher, Metrics())  # type: ignore[arg-type]
        running = asyncio.create_task(loop.run())
        queue.put(entries[:3])
        assert await asyncio.to_thread(backend.entered.wait, 30)  # batch 1 is on the thread
        queue.put(entries[3:5])  # a partial batch: not handed over while the backend is busy
        await reader_has_looked(queue)
        assert executor.submitted == 1 and len(queue) == 2
        queue.put(entries[5:7])  # now 4 queued: a full batch of 3 goes at once
        await wait_until_async(lambda: executor.submitted == 2, 10, message="no full batch")
        assert len(queue) == 1  # taken while batch 1 is still on the thread (gate closed)
        backend.gate.set()  # the queue stays open: the partial batch goes once the thread is free
        await wait_until_async(
            lambda: len(publisher.outputs) == len(entries), 30, message="not all published"
        )
        assert executor.submitted == 3
        assert not running.done()
        queue.close()
        await asyncio.wait_for(running, 30)
    assert backend.passes == [3, 3, 1]
    assert [item for item, _ in publisher.outputs] == [entry.item for entry in entries]
