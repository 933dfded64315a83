"""Toy tasks for the choice of the recommended model: a test split that reverses the select split's
order, and a task without a select split."""

from __future__ import annotations

from cycleqd.evaluation.base import Backend, TaskResult
from toy_tasks import Regression


class ReversedTest(Regression):
    """Like ``Regression``, but its test score is 1 − its select score: a choice that read the test
    split would pick the candidate that is worst on select."""

    def evaluate(self, backend: Backend, *, split: str) -> TaskResult:
        if split == "test":
            on_select = super().evaluate(backend, split="select").score
            return TaskResult(task=self.name, split="test", score=1.0 - on_select)
        return super().evaluate(backend, split=split)


class WithoutSelect(Regression):
    """Like ``Regression``, without a select split."""

    offered_splits = ("validation", "test")
