"""One line of ``metrics.jsonl``: what a generation did, written once it is incorporated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GenerationLine:
    """What one generation did (the fields, in this order, are the keys of its metrics line).

    Attributes:
        generation: g.
        active_task: The task whose archive gave the parents.
        parents: The parents' ids.
        child: The child's id.
        status: ``elite``, ``rejected`` or ``failed``.
        scores: The child's validation scores by task (``None`` when it failed).
        error: Why it failed.
        archives: Per task, what its archive did with the child (status, cell, displaced elite).
        released: Models whose weights were deleted because no archive holds them any more.
        metrics: Each archive's metrics after the generation (filled cells, QD score, best).
        crossover: The drawn crossover coefficients.
        mutation: The mutation's record.
        seconds: Wall time of the child's build and evaluation, by part.
        worker: The Ray worker that made it (``None`` for the local runner).
        time: When it was incorporated (UTC, ISO 8601).
    """

    generation: int
    active_task: str
    parents: list[str]
    child: str
    status: str
    scores: dict[str, float] | None
    error: str | None
    archives: dict[str, Any]
    released: list[str]
    metrics: dict[str, Any]
    crossover: dict[str, Any] | None
    mutation: dict[str, Any] | None
    seconds: dict[str, float]
    worker: str | None
    time: str

    def to_json(self) -> dict[str, Any]:
        """The metrics line as a JSON-ready mapping."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
