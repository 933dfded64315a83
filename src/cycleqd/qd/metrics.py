"""Summaries of archives for logs and reports: coverage, QD score, bests, Pareto front."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cycleqd.qd._checks import check_score_map, check_tasks
from cycleqd.qd.archive import Archive
from cycleqd.qd.archive_set import ArchiveSet


def archive_metrics(archive: Archive) -> dict[str, Any]:
    """Metrics of one archive.

    Args:
        archive: The archive.

    Returns:
        A JSON-ready dict: ``filled`` (cells holding an elite), ``cells`` (all cells), ``coverage``
        (filled / cells), ``qd_score`` (sum of the filled cells' qualities, with no offset),
        ``best`` (``{"model": id, "score": quality}`` of :meth:`Archive.best`, or ``None`` when empty)
        and ``out_of_range`` (task → ``{"below": n, "above": n}`` over all offers).
    """
    filled = len(archive)
    cells = archive.n_cells
    best = archive.best()
    return {
        "filled": filled,
        "cells": cells,
        "coverage": filled / cells,
        # fsum over cells in sorted order: the same value however the archive was filled.
        "qd_score": math.fsum(archive.quality(e) for e in archive.elites()),
        "best": None if best is None else {"model": best.model_id, "score": archive.quality(best)},
        "out_of_range": archive.out_of_range,
    }


def set_metrics(archive_set: ArchiveSet) -> dict[str, dict[str, Any]]:
    """:func:`archive_metrics` of every archive of a set.

    Args:
        archive_set: The archives.

    Returns:
        Task → metrics of that task's archive, in task order.
    """
    return {task: archive_metrics(archive) for task, archive in archive_set.items()}


def best_per_task(archive_set: ArchiveSet) -> dict[str, dict[str, Any] | None]:
    """The best elite of each task's archive (the models that CycleQD aggregates at the end).

    Args:
        archive_set: The archives.

    Returns:
        Task → ``{"model": id, "score": score on that task}``, or ``None`` for an empty archive; ties
        are broken as in :meth:`Archive.best`.
    """
    out: dict[str, dict[str, Any] | None] = {}
    for task, archive in archive_set.items():
        best = archive.best()
        out[task] = None if best is None else {"model": best.model_id, "score": archive.quality(best)}
    return out


def pareto_front(
    scores: Mapping[str, Mapping[str, float]], *, tasks: Sequence[str] | None = None
) -> list[str]:
    """The models that no other model dominates.

    Model a dominates model b when a scores at least as high as b on every task and higher on at least
    one. Models with identical scores do not dominate each other, so both stay on the front.

    Args:
        scores: Model id → task → score in [0, 1].
        tasks: The tasks to compare on; defaults to the tasks of the first model. Every model must
            have a score on each of them (extra tasks are ignored).

    Returns:
        The ids on the front, sorted.

    Raises:
        ValueError: When a model lacks a task or a score is not a finite number in [0, 1].
    """
    if not scores:
        return []
    names = check_tasks(tasks if tasks is not None else list(next(iter(scores.values()))))
    vectors = {
        m: tuple(check_score_map(names, s, who=f"score of model {m!r}").values()) for m, s in scores.items()
    }

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    return sorted(m for m, v in vectors.items() if not any(dominates(w, v) for w in vectors.values()))
