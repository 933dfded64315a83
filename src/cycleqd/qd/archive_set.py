"""The set of archives of a run (one per task), with the reference counts that free weights.

Each model is offered to every archive; :class:`ArchiveSet` counts in how many cells each id sits and
reports the ids that lost their last cell, so the engine can delete their weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cycleqd.qd._checks import check_run_tasks, require_key
from cycleqd.qd.archive import AddResult, Archive
from cycleqd.qd.bins import BinSpec

ARCHIVE_SET_FORMAT = "cycleqd.archive_set/1"


@dataclass(frozen=True)
class SetAddResult:
    """The outcome of offering a model to every archive of an :class:`ArchiveSet`.

    Attributes:
        results: Task → the outcome in that task's archive, in the run's task order.
        released: Ids of models that this offer displaced from their last cell, in the order they were
            displaced: no archive refers to them any more, so their weights can be deleted. The offered
            model itself is never listed; when :attr:`added` is false no archive holds it either.
    """

    results: dict[str, AddResult]
    released: list[str]

    @property
    def added(self) -> bool:
        """Whether at least one archive took the offered model."""
        return any(r.added for r in self.results.values())

    @property
    def added_to(self) -> list[str]:
        """The tasks whose archive took the offered model."""
        return [t for t, r in self.results.items() if r.added]


class ArchiveSet:
    """One :class:`Archive` per task, with a count of the cells that hold each model.

    Args:
        tasks: All K tasks of the run, in order (K >= 2).
        bin_specs: Task → :class:`BinSpec` for every task; the archive of task k uses the specs of the
            other tasks.

    Raises:
        ValueError: When there are fewer than 2 tasks or a task has no spec.
    """

    def __init__(self, *, tasks: Sequence[str], bin_specs: Mapping[str, BinSpec]) -> None:
        self._tasks = check_run_tasks(tasks)
        # With K >= 2 every task gives a cell coordinate in some other archive, so the archives check
        # every spec.
        self._archives = {t: Archive(task=t, tasks=self._tasks, bin_specs=bin_specs) for t in self._tasks}
        self._specs = {t: bin_specs[t] for t in self._tasks}
        self._refs: dict[str, int] = {}

    @property
    def tasks(self) -> tuple[str, ...]:
        """All tasks, in order."""
        return self._tasks

    @property
    def bin_specs(self) -> dict[str, BinSpec]:
        """Task → spec, for every task."""
        return dict(self._specs)

    def __getitem__(self, task: str) -> Archive:
        try:
            return self._archives[task]
        except KeyError:
            raise KeyError(f"no archive for task {task!r}; the tasks are {list(self._tasks)!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def items(self) -> list[tuple[str, Archive]]:
        """(task, archive) pairs in task order."""
        return list(self._archives.items())

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._refs

    def __repr__(self) -> str:
        filled = ", ".join(f"{t}: {len(a)}/{a.n_cells}" for t, a in self._archives.items())
        return f"ArchiveSet({filled}; models={len(self._refs)})"

    def add(self, model_id: str, scores: Mapping[str, float]) -> SetAddResult:
        """Offer a model to every archive, in task order, and update the reference counts.

        The offer is checked against every archive first, so an invalid offer changes nothing.

        Args:
            model_id: The model's id (a new id for each new model).
            scores: Task → score in [0, 1] on every task.

        Returns:
            The outcome per archive and the ids that lost their last cell (see :class:`SetAddResult`).

        Raises:
            TypeError: When the id is not a non-empty string or a score is not a number.
            ValueError: When a task is missing, a score is NaN, infinite or outside [0, 1], or the id is
                already held with other scores.
        """
        for archive in self._archives.values():
            archive.validate_offer(model_id, scores)
        results: dict[str, AddResult] = {}
        released: list[str] = []
        for task, archive in self._archives.items():
            result = archive.add(model_id, scores)
            results[task] = result
            if result.added:
                self._refs[model_id] = self._refs.get(model_id, 0) + 1
            if result.displaced is not None:
                left = self._refs[result.displaced] - 1
                if left:
                    self._refs[result.displaced] = left
                else:
                    del self._refs[result.displaced]
                    released.append(result.displaced)
        return SetAddResult(results=results, released=released)

    def refcount(self, model_id: str) -> int:
        """Number of cells, over all archives, that hold the model (0 if none)."""
        return self._refs.get(model_id, 0)

    def refcounts(self) -> dict[str, int]:
        """Model id → number of cells holding it, for every held model, sorted by id."""
        return {m: self._refs[m] for m in sorted(self._refs)}

    def model_ids(self) -> list[str]:
        """Ids of every model held by at least one archive, sorted."""
        return sorted(self._refs)

    def elite_scores(self) -> dict[str, dict[str, float]]:
        """Model id → scores on all tasks, for every held model, sorted by id."""
        found: dict[str, dict[str, float]] = {}
        for archive in self._archives.values():
            for elite in archive.elites():
                found.setdefault(elite.model_id, elite.scores)
        return {m: found[m] for m in sorted(found)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` rebuilds an equal set (reference counts are derived)."""
        return {
            "format": ARCHIVE_SET_FORMAT,
            "tasks": list(self._tasks),
            "bin_specs": {t: s.to_dict() for t, s in self.bin_specs.items()},
            "archives": {t: a.to_dict() for t, a in self._archives.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchiveSet:
        """Rebuild a set written by :meth:`to_dict`.

        Args:
            data: The dict (for example read back from JSON).

        Returns:
            The set, equal to the one that was written, with its reference counts recomputed.

        Raises:
            ValueError: When the dict is malformed, an archive does not match the set's tasks and specs,
                or one model has different scores in two archives.
        """
        what = "ArchiveSet"
        fmt = require_key(data, "format", what)
        if fmt != ARCHIVE_SET_FORMAT:
            raise ValueError(
                f"archive set dict has format {fmt!r}; this version reads {ARCHIVE_SET_FORMAT!r}"
            )
        specs = {t: BinSpec.from_dict(s) for t, s in require_key(data, "bin_specs", what).items()}
        out = cls(tasks=require_key(data, "tasks", what), bin_specs=specs)
        archives = require_key(data, "archives", what)
        if set(archives) != set(out._tasks):
            raise ValueError(
                f"archive set dict has archives for {sorted(archives)!r}, expected {sorted(out._tasks)!r}"
            )
        seen: dict[str, dict[str, float]] = {}
        for task in out._tasks:
            archive = Archive.from_dict(archives[task])
            if (
                archive.task != task
                or archive.tasks != out._tasks
                or archive.bin_specs != out._archives[task].bin_specs
            ):
                raise ValueError(
                    f"archive set dict: the archive stored under {task!r} has task {archive.task!r}, tasks "
                    f"{list(archive.tasks)!r} or bin specs that differ from the set's"
                )
            out._archives[task] = archive
            for elite in archive.elites():
                if seen.setdefault(elite.model_id, elite.scores) != elite.scores:
                    raise ValueError(
                        f"archive set dict: model {elite.model_id!r} has different scores in two archives"
                    )
                out._refs[elite.model_id] = out._refs.get(elite.model_id, 0) + 1
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArchiveSet):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable
