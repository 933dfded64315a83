"""A two-thread pipeline: one thread produces items while another consumes them (writes shards)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


_DONE = object()
_ABORT = object()


class _AbortedError(Exception):
    """Raised inside the writer when the producer failed, so that it cleans up."""


def consume_in_background(items: Iterable[T], consume: Callable[[Iterator[T]], R], *, depth: int) -> R:
    """Run ``consume(iterator)`` in a background thread while this thread produces the items.

    The merge computes tensors on the calling thread (so its large allocations come from the main
    heap, which the allocator reuses) while the writer stores earlier ones; torch and safetensors
    release the GIL, so the two overlap. At most ``depth`` items wait in between.

    Args:
        items: Produced on the calling thread.
        consume: Called once, in the background, with an iterator over the items.
        depth: Items buffered at most.

    Returns:
        What ``consume`` returned.

    Raises:
        BaseException: Whatever the producer or ``consume`` raised; when the producer fails,
            ``consume`` sees an exception from its iterator (so it can clean up) before this re-raises.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    outcome: dict[str, Any] = {}

    def drain() -> Iterator[T]:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if item is _ABORT:
                raise _AbortedError("the merge stopped before the last tensor")
            yield item

    def work() -> None:
        try:
            outcome["value"] = consume(drain())
        except BaseException as exc:  # re-raised on the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="merge-writer", daemon=True)
    worker.start()

    def put(item: Any) -> None:
        while worker.is_alive():
            try:
                buffer.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    try:
        for item in items:
            if not worker.is_alive():
                break
            put(item)
        put(_DONE)
    except BaseException:
        put(_ABORT)
        worker.join()
        raise
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
