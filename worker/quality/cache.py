"""What the worker published per comment id, for as long as a bounded LRU keeps it.

Moderators decide on a comment after it was scored; their decision (a `Feedback` record) often
does not carry the scores, so the worker remembers the last `capacity` comments it scored: id ->
scores (float32, in the model's label order), the model and the policy version. Filled by the
Kafka publisher (key: the comment's id) and by the HTTP API (key: `clientToken`, else the same
`sha256:` id of the text that suggestscore gives its record: `worker.http.suggest.comment_id`).
Touched on the event loop only (no lock).

Memory: about 300 bytes per entry with ids of ~20 characters (measured in
tests/worker/test_quality.py), so the default 100,000 entries hold about 30 MB.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from schemas import ModelRef


@dataclass(frozen=True, slots=True)
class Published:
    """What the worker published for one comment."""

    scores: bytes  # float32 in `labels` order (bytes: ~5x smaller than a dict of floats)
    labels: tuple[str, ...]  # shared by every entry of one model
    model: ModelRef  # shared likewise
    policy_version: str

    def score_dict(self) -> dict[str, float]:
        values = np.frombuffer(self.scores, dtype=np.float32).tolist()
        return dict(zip(self.labels, values, strict=True))

    def score_of(self, label: str) -> float | None:
        try:
            index = self.labels.index(label)
        except ValueError:
            return None
        return float(np.frombuffer(self.scores, dtype=np.float32, count=1, offset=4 * index)[0])


class ScoreCache:
    """id -> `Published`, the `capacity` most recently scored ids (least recent evicted)."""

    def __init__(self, capacity: int, labels: tuple[str, ...], model: ModelRef) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._labels = labels
        self._model = model
        self._entries: OrderedDict[str, Published] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, comment_id: str, probabilities: np.ndarray, policy_version: str) -> None:
        """`comment_id` was scored `probabilities` (one row, the model's label order)."""
        entry = Published(
            np.asarray(probabilities, dtype=np.float32).tobytes(),
            self._labels,
            self._model,
            policy_version,
        )
        entries = self._entries
        entries[comment_id] = entry
        entries.move_to_end(comment_id)
        if len(entries) > self.capacity:
            entries.popitem(last=False)

    def get(self, comment_id: str) -> Published | None:
        """What was published for `comment_id` (None: never, or evicted since)."""
        return self._entries.get(comment_id)
