"""What travels through the pipeline: a consumed record and its at-least-once ticket, or an HTTP
request's text waiting for its scores.

The batch queue holds either; what completes them differs (`worker/pipeline/inference.py`): a
Kafka record (`InFlight`) is published and its offset acknowledged, an HTTP text (`Reply`)
resolves the future its request handler awaits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka.structs import ConsumerRecord

from schemas import Comment, CommentLanguage
from worker.pipeline.checkpoint import Ticket


@dataclass(slots=True)
class InFlight:
    """A consumed record, tracked until its output or dead letter is acknowledged."""

    record: ConsumerRecord
    ticket: Ticket
    comment: Comment | None = None
    trace: Any = None  # with tracing on: the context of its consume span (worker/tracing.py)
    # with language detection on: its language, judged at intake (worker/pipeline/consume.py)
    language: CommentLanguage | None = None
    hold: bool = False  # its language is not served and its tenant's mode is `hold`


@dataclass(slots=True, eq=False)
class Reply:
    """One text of an HTTP request: scored in the shared batches, its row handed to `future`.

    Holds no text (only its token ids travel, in `Tokenized`), so nothing of a request outlives
    its answer."""

    future: asyncio.Future[np.ndarray] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def resolve(self, outcome: np.ndarray | Exception) -> None:
        """The row of probabilities, or why there is none (the caller may have gone)."""
        if self.future.done():
            return
        if isinstance(outcome, Exception):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


Work = InFlight | Reply  # what one queued entry completes
