"""Sandboxed checks of answers, run in batches where the sandbox allows it.

A kind that executes answers (``python_code``, ``shell``) describes each answer's check as a
:class:`Check`: the program to run and how its outcome becomes the verdict. :func:`settle` runs the
checks of many answers ``check_batch`` at a time, one sandboxed run per batch
(:func:`~cycleqd.evaluation.sandbox.batch.run_batch`), batches in parallel; what a batch could not
settle runs alone, as every check did before batches. A check's outcome is the same either way, and so
is the verdict, since both paths go through the same ``finish``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator

from cycleqd.evaluation.base import ItemResult
from cycleqd.evaluation.sandbox.batch import (
    JobOutcome,
    SandboxJob,
    batch_unavailable,
    run_alone,
    run_batch,
)

#: Answers checked per sandboxed run by default.
DEFAULT_CHECK_BATCH = 16


def _check_batch(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1 (1 checks each answer in a sandbox of its own), got {value}")
    return value


#: The ``check_batch`` param: answers checked per sandboxed run (1: each in a sandbox of its own).
CheckBatch = Annotated[int, AfterValidator(_check_batch)]


@dataclass(frozen=True)
class Check:
    """The sandboxed check of one answer.

    Attributes:
        job: The program to run.
        finish: The verdict, from what the program did.
    """

    job: SandboxJob
    finish: Callable[[JobOutcome], ItemResult]


def chunks(count: int, size: int) -> list[range]:
    """Split ``count`` jobs into the fewest runs of at most ``size``, as even as possible.

    Args:
        count: Number of jobs.
        size: Most jobs per run.

    Returns:
        Index ranges, in order.
    """
    if count == 0:
        return []
    n = math.ceil(count / size)
    bounds = [round(k * count / n) for k in range(n + 1)]
    return [range(bounds[k], bounds[k + 1]) for k in range(n)]


def run_jobs(task: Any, jobs: Sequence[SandboxJob], *, size: int) -> list[JobOutcome]:
    """Run programs for a task: ``size`` per sandboxed run where possible, the others alone.

    Args:
        task: The task (its sandbox, limits and :meth:`map_items` are used).
        jobs: The programs.
        size: Most programs per run (1: each alone).

    Returns:
        What each program did, in order.
    """
    sandbox, limits = task.context.sandbox, task.limits()
    outcomes: list[JobOutcome | None] = [None] * len(jobs)
    if size > 1 and len(jobs) > 1 and batch_unavailable(sandbox) is None:
        parts = chunks(len(jobs), size)

        def batch(part: range) -> list[JobOutcome | None]:
            return run_batch(sandbox, [jobs[i] for i in part], limits=limits)

        for part, got in zip(parts, task.map_items(batch, parts), strict=True):
            for i, outcome in zip(part, got, strict=True):
                outcomes[i] = outcome
    alone = [i for i, outcome in enumerate(outcomes) if outcome is None]

    def one(i: int) -> JobOutcome:
        return run_alone(sandbox, jobs[i], limits=limits)

    for i, outcome in zip(alone, task.map_items(one, alone), strict=True):
        outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


def settle(task: Any, plans: Sequence[ItemResult | Check], *, size: int) -> list[ItemResult]:
    """Verdicts of answers: those already known as they are, the checks run (see :func:`run_jobs`).

    Args:
        task: The task.
        plans: Per answer, its verdict or its check.
        size: Most checks per sandboxed run.

    Returns:
        One verdict per answer, in order.
    """
    checks = [(i, p) for i, p in enumerate(plans) if isinstance(p, Check)]
    results: list[ItemResult | None] = [p if isinstance(p, ItemResult) else None for p in plans]
    outcomes = run_jobs(task, [c.job for _, c in checks], size=size)
    for (i, check), outcome in zip(checks, outcomes, strict=True):
        results[i] = check.finish(outcome)
    return [r for r in results if r is not None]


class BatchedChecks:
    """Judging for kinds whose answers run as :class:`Check` s: one answer alone, or many in batches.

    A kind mixes this in and defines ``plan(item, output) -> ItemResult | Check``; its params carry
    ``check_batch``.
    """

    def plan(self, item: Any, output: str) -> ItemResult | Check:
        """The verdict of an answer that needs no run, else its check (kinds define it)."""
        raise NotImplementedError

    def judge(self, item: Any, output: str) -> ItemResult:
        """Judge one answer (in a sandbox of its own when it runs).

        Args:
            item: The item.
            output: What the model wrote.

        Returns:
            The verdict.
        """
        return settle(self, [self.plan(item, output)], size=1)[0]

    def judge_batch(self, pairs: Sequence[tuple[Any, str]]) -> list[ItemResult]:
        """Judge answers, running up to ``check_batch`` of them per sandboxed run.

        Args:
            pairs: (item, output) pairs.

        Returns:
            One result per pair, in order.
        """
        size = self.params.check_batch  # type: ignore[attr-defined]
        return settle(self, [self.plan(item, output) for item, output in pairs], size=size)
