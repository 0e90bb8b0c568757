"""What travels through the pipeline: a consumed record and its at-least-once bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord

from schemas import Comment
from worker.offsets import PartitionOffsets


@dataclass(slots=True)
class InFlight:
    """A consumed record, tracked until its output or dead letter is acknowledged."""

    record: ConsumerRecord
    offsets: PartitionOffsets
    comment: Comment | None = None
