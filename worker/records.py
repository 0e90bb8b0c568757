"""What travels through the pipeline: a consumed record and its at-least-once ticket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.structs import ConsumerRecord

from schemas import Comment
from worker.checkpoint import Ticket


@dataclass(slots=True)
class InFlight:
    """A consumed record, tracked until its output or dead letter is acknowledged."""

    record: ConsumerRecord
    ticket: Ticket
    comment: Comment | None = None
    trace: Any = None  # with tracing on: the context of its consume span (worker/tracing.py)
