"""The interface between the driver loop and whatever executes jobs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from cycleqd.engine.children import Job, JobOutcome


class Runner(ABC):
    """Executes jobs and keeps each child's weights until the driver says what to do with them.

    The driver submits up to :attr:`slots` jobs, takes outcomes in any order from
    :meth:`next_outcome`, and for each outcome calls :meth:`persist` (an archive took the child) or
    :meth:`discard`.
    """

    #: How many jobs may be in flight at once.
    slots: int = 1

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Start a job."""

    @abstractmethod
    def next_outcome(self) -> JobOutcome:
        """Wait for and return the outcome of a submitted job (any of them)."""

    @abstractmethod
    def persist(self, outcome: JobOutcome, path: Path) -> None:
        """Save the child's weights as a model folder at ``path``."""

    def discard(self, outcome: JobOutcome) -> None:  # noqa: B027 - optional hook
        """Forget the child's weights."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers and resources."""
