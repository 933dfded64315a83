"""The local runner: jobs run one at a time in the driver's process."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from cycleqd.engine.children import ChildBuilder, Job, JobOutcome, execute_job
from cycleqd.engine.runners.base import Runner
from cycleqd.evaluation.evaluator import Evaluator
from cycleqd.weights import save_model


class LocalRunner(Runner):
    """Runs each job when its outcome is asked for.

    Args:
        builder: Builds children.
        evaluator: Evaluates them.
        durable: Flush the elites' weights to disk (see ``models.durable_writes``).
    """

    slots = 1

    def __init__(self, builder: ChildBuilder, evaluator: Evaluator, *, durable: bool = False) -> None:
        self.builder = builder
        self.evaluator = evaluator
        self.durable = durable
        self._queue: deque[Job] = deque()

    def submit(self, job: Job) -> None:  # noqa: D102
        self._queue.append(job)

    def next_outcome(self) -> JobOutcome:  # noqa: D102
        return execute_job(self._queue.popleft(), self.builder, self.evaluator)

    def persist(self, outcome: JobOutcome, path: Path) -> None:  # noqa: D102
        assert outcome.weights is not None, "the local runner keeps every child's weights"
        # The tensors are already in the storage dtype; naming it also records it in config.json.
        save_model(
            outcome.weights, path, template=self.builder.base, dtype=self.builder.dtype, durable=self.durable
        )
        self.builder.recycle(outcome.weights)
        outcome.weights = None

    def discard(self, outcome: JobOutcome) -> None:  # noqa: D102
        self.builder.recycle(outcome.weights)
        outcome.weights = None
