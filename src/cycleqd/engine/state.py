"""The state of a run and its checkpoint: everything needed to resume exactly where it stopped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.atomic import atomic_write_json
from cycleqd.engine.job import Job
from cycleqd.engine.model_registry import ModelRegistry
from cycleqd.errors import CycleQDError
from cycleqd.qd import ArchiveSet

CHECKPOINT_VERSION = 1


@dataclass
class RunState:
    """A run between two generations.

    Attributes:
        seed: The run seed.
        tasks: Task names in archive order.
        generation: Number of generations incorporated so far (the next one to incorporate).
        generations: Number of generations the run makes.
        archives: One archive per task.
        registry: Every model seen.
        in_flight: Jobs drawn but not yet incorporated, oldest first (their parents were chosen from
            the archives as they were when each was drawn).
        initial_metrics: Archive metrics right after the experts were inserted.
        finished: Whether the final aggregation and test evaluation are done.
        final: Results of the end of the run (aggregate, bests, test scores).
    """

    seed: int
    tasks: list[str]
    generation: int
    generations: int
    archives: ArchiveSet
    registry: ModelRegistry
    in_flight: list[Job] = field(default_factory=list)
    initial_metrics: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    final: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "version": CHECKPOINT_VERSION,
            "seed": self.seed,
            "tasks": self.tasks,
            "generation": self.generation,
            "generations": self.generations,
            "archives": self.archives.to_dict(),
            "registry": self.registry.to_list(),
            "in_flight": [j.to_dict() for j in self.in_flight],
            "initial_metrics": self.initial_metrics,
            "finished": self.finished,
            "final": self.final,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        """Inverse of :meth:`to_dict`."""
        if d.get("version") != CHECKPOINT_VERSION:
            raise CycleQDError(
                f"checkpoint version {d.get('version')} is not supported by this cycleqd "
                f"(expects {CHECKPOINT_VERSION}); resume it with the version that wrote it"
            )
        return cls(
            seed=d["seed"],
            tasks=list(d["tasks"]),
            generation=d["generation"],
            generations=d["generations"],
            archives=ArchiveSet.from_dict(d["archives"]),
            registry=ModelRegistry.from_list(d["registry"]),
            in_flight=[Job.from_dict(j) for j in d["in_flight"]],
            initial_metrics=d.get("initial_metrics", {}),
            finished=d["finished"],
            final=d.get("final", {}),
        )

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> RunState:
        """Read a checkpoint.

        Raises:
            CycleQDError: If it is missing or unreadable.
        """
        if not path.is_file():
            raise CycleQDError(f"{path} does not exist: this folder holds no checkpoint of a run")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            raise CycleQDError(
                f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); restore it from a "
                "backup or start the run again"
            ) from exc
