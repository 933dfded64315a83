"""Memos of verdicts and references: an answer already judged for an item is not executed again.

Evolution scores many children that differ little, and small models repeat the same answers across
children; executing a program in the sandbox costs tens of milliseconds, generating its text far less.
A verdict depends only on the task (its signature: kind, params, data, scoring version, limits), the
item and the part of the answer that is executed (the extracted program), so it is kept under that key
for the life of the process. A program whose verdict could change from run to run (one that times out
on a busy machine, or draws random numbers) keeps its first verdict, which makes scores repeatable.

What preparing a task computes (databases and reference results, what reference commands did) is kept
the same way, so that the several runs of one process (a demo runs CycleQD, ablations and baselines on
the same tasks) prepare each item once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cycleqd.evaluation.base import ItemResult

#: Entries kept before the least recently used ones are forgotten.
DEFAULT_MAX_ENTRIES = 200_000

V = TypeVar("V")


class Memo(Generic[V]):
    """A thread-safe, bounded map (least recently used entries are dropped), with hit counters.

    Args:
        max_entries: Most entries kept (least recently used ones are dropped beyond it).

    Raises:
        ValueError: When ``max_entries`` is not positive.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        """The value stored under a key, or ``None`` (counted as a hit or a miss)."""
        with self._lock:
            result = self._data.get(key)
            if result is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return result

    def put(self, key: Hashable, result: V) -> None:
        """Store a value."""
        with self._lock:
            self._data[key] = result
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        """Forget everything and reset the counters."""
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


@dataclass
class Memos:
    """The memos tasks share: verdicts and what preparing computed.

    Attributes:
        verdicts: Verdicts by (task signature, split, item id, answer key).
        references: What preparing computed, by (task signature, what, split, item id).
    """

    verdicts: Memo[ItemResult] = field(default_factory=Memo)
    references: Memo[Any] = field(default_factory=Memo)


#: The process's memos: a task gets them through its :class:`~.common.TaskContext` unless it is
#: given others, so that every run of one process judges an answer once and alike.
PROCESS_MEMOS = Memos()
