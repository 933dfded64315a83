"""A toy task that misbehaves on chosen calls: raises, or computes a NaN score."""

from __future__ import annotations

from cycleqd.evaluation.base import Backend, TaskResult
from toy_tasks import Regression


class Flaky(Regression):
    """Like ``Regression`` but raises on the calls in ``raise_on`` and yields NaN on ``nan_on``
    (calls counted from 1 over the life of the task)."""

    def __init__(self, *, name: str, target: str, points: int = 128, raise_on=(), nan_on=()) -> None:
        super().__init__(name=name, target=target, points=points)
        self.raise_on = set(raise_on)
        self.nan_on = set(nan_on)
        self.calls = 0

    def evaluate(self, backend: Backend, *, split: str) -> TaskResult:
        self.calls += 1
        if self.calls in self.raise_on:
            raise RuntimeError(f"simulated failure on call {self.calls}")
        if self.calls in self.nan_on:
            return TaskResult(task=self.name, split=split, score=float("nan"))
        return super().evaluate(backend, split=split)
