"""Topic names for one run: input, output, dead-letter topic and consumer group, fresh each time."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from testing.kafka import create_topics


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls, label: str) -> Topics:
        """New names: `in-<label>-<random>`, `out-…`, `dlq-…`, `group-…`."""
        suffix = f"{label}-{uuid.uuid4().hex[:8]}"
        return cls(f"in-{suffix}", f"out-{suffix}", f"dlq-{suffix}", f"group-{suffix}")

    async def create(self, bootstrap: str, partitions: int = 3, output_partitions: int = 1) -> None:
        """Create the input and output topics with these partitions, the dead-letter topic
        with one."""
        await create_topics(
            bootstrap, {self.input: partitions, self.output: output_partitions, self.dlq: 1}
        )


def fresh_topics(
    bootstrap: str, label: str, partitions: int = 3, output_partitions: int = 1
) -> Topics:
    """`Topics.fresh(label)`, created on the broker (call it outside a running event loop)."""
    topics = Topics.fresh(label)
    asyncio.run(topics.create(bootstrap, partitions, output_partitions))
    return topics
