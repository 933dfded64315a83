"""Helpers for tests of batched checks: judging answers both ways and comparing verdicts."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

_TIMED_OUT = re.compile(r"timed out after [0-9.]+ s")


def verdicts(results: Sequence[Any]) -> list[tuple[bool, float, str | None]]:
    """(correct, score, reason) of each item result; measured timeout durations are blanked out."""
    return [
        (r.correct, r.score, _TIMED_OUT.sub("timed out after _ s", r.reason) if r.reason else r.reason)
        for r in results
    ]


def children_of(pid: int) -> list[int]:
    """Pids of a process's children (from ``/proc``)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                found.extend(int(p) for p in fh.read().split())
        except OSError:
            continue
    return found
