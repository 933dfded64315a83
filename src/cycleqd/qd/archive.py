"""The archive of one task (a grid of elites) and the set of archives of a run, with reference counts.

Archive k holds models by the score on task k (the quality) in a grid whose cell is given by the
scores on the other K − 1 tasks, each cut into bins by a :class:`~cycleqd.qd.bins.BinSpec`. A model
takes its cell when the cell is empty or its quality is strictly greater than the incumbent's.

Archives hold model ids and scores only, never weights; :class:`~cycleqd.qd.archive_set.ArchiveSet`
groups the K archives of a run and counts the cells that hold each model.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cycleqd.qd._checks import check_run_tasks, check_score_map, require_key
from cycleqd.qd.bins import BinSpec

ARCHIVE_FORMAT = "cycleqd.archive/1"

Cell = tuple[int, ...]


class AddStatus(enum.Enum):
    """What happened to a model offered to an archive."""

    NEW = "new"
    """It took an empty cell."""
    IMPROVED = "improved"
    """It displaced an incumbent with a strictly lower quality."""
    NOT_ADDED = "not_added"
    """The cell's incumbent is at least as good (ties keep the incumbent)."""

    @property
    def added(self) -> bool:
        """Whether the model now holds a cell."""
        return self is not AddStatus.NOT_ADDED


@dataclass(frozen=True)
class Elite:
    """A model held by an archive.

    Attributes:
        model_id: The model's id.
        scores: Its scores on all tasks of the run (task → score in [0, 1]), in the run's task order.
    """

    model_id: str
    scores: dict[str, float]


@dataclass(frozen=True)
class AddResult:
    """The outcome of offering a model to one archive.

    Attributes:
        status: NEW, IMPROVED or NOT_ADDED.
        cell: The cell the model's scores fall in (whether or not it took it).
        quality: The model's quality, its score on the archive's task.
        displaced: The id of the incumbent it displaced (IMPROVED only), else ``None``.
        incumbent_quality: The quality of the cell's incumbent before the offer, ``None`` if the cell
            was empty.
        out_of_range: Task → −1 / 0 / +1 for each task that makes up the cell: whether the score lay
            below, inside or above that task's bin range (out-of-range values go to the edge cell).
    """

    status: AddStatus
    cell: Cell
    quality: float
    displaced: str | None
    incumbent_quality: float | None
    out_of_range: dict[str, int]

    @property
    def added(self) -> bool:
        """Whether the model took the cell."""
        return self.status.added


def _copy(elite: Elite) -> Elite:
    # Handing out copies keeps callers from editing the archive's scores through an Elite.
    return Elite(model_id=elite.model_id, scores=dict(elite.scores))


class Archive:
    """The archive of one task: one elite per cell of a grid over the other tasks' scores.

    Use :class:`~cycleqd.qd.archive_set.ArchiveSet` in a run: it offers each model to every archive
    and keeps the reference counts that tell when a model's weights can be deleted.

    Args:
        task: The task whose score is the quality.
        tasks: All K tasks of the run, in order (K >= 2). The cell is given by the scores on the
            tasks other than ``task``, in this order.
        bin_specs: Task → :class:`BinSpec`, for at least every task other than ``task`` (a spec for
            ``task`` itself is allowed and ignored).

    Raises:
        ValueError: When there are fewer than 2 tasks, ``task`` is not among them, or a spec is missing
            or belongs to another task.
        TypeError: When ``tasks`` is not a list of names or a spec is not a :class:`BinSpec`.
    """

    def __init__(self, *, task: str, tasks: Sequence[str], bin_specs: Mapping[str, BinSpec]) -> None:
        self._tasks = check_run_tasks(tasks)
        if task not in self._tasks:
            raise ValueError(f"archive task {task!r} is not one of the tasks {list(self._tasks)!r}")
        self._task = task
        self._measures = tuple(t for t in self._tasks if t != task)
        specs = []
        for t in self._measures:
            if t not in bin_specs:
                raise ValueError(
                    f"archive of task {task!r} needs a BinSpec for task {t!r}; bin_specs has "
                    f"{sorted(bin_specs)!r} (make_bin_specs builds one per task)"
                )
            spec = bin_specs[t]
            if not isinstance(spec, BinSpec):
                raise TypeError(f"bin_specs[{t!r}] must be a BinSpec, got {type(spec).__name__}")
            if spec.task != t:
                raise ValueError(
                    f"bin_specs[{t!r}] is the spec of task {spec.task!r}; key it by its own task"
                )
            specs.append(spec)
        self._specs = tuple(specs)
        self._cells: dict[Cell, Elite] = {}
        # Order in which each cell's elite was placed: breaks ties in best() and survives to_dict().
        self._order: dict[Cell, int] = {}
        self._next_order = 0
        self._where: dict[str, Cell] = {}
        self._out_of_range = {t: {"below": 0, "above": 0} for t in self._measures}
        self._stats = {"offers": 0, "new": 0, "improved": 0, "not_added": 0}

    # ----------------------------------------------------------------------------------------- shape

    @property
    def task(self) -> str:
        """The task whose score is the quality."""
        return self._task

    @property
    def tasks(self) -> tuple[str, ...]:
        """All tasks of the run, in order."""
        return self._tasks

    @property
    def measure_tasks(self) -> tuple[str, ...]:
        """The tasks whose scores give the cell, in the order of the cell's coordinates."""
        return self._measures

    @property
    def bin_specs(self) -> dict[str, BinSpec]:
        """Task → spec for the tasks that give the cell."""
        return dict(zip(self._measures, self._specs, strict=True))

    @property
    def dims(self) -> tuple[int, ...]:
        """Number of bins along each coordinate of the cell."""
        return tuple(s.bins for s in self._specs)

    @property
    def n_cells(self) -> int:
        """Number of cells of the grid (filled or not)."""
        return math.prod(self.dims)

    def __len__(self) -> int:
        return len(self._cells)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._where

    def __repr__(self) -> str:
        return f"Archive(task={self._task!r}, filled={len(self)}/{self.n_cells})"

    # ------------------------------------------------------------------------------------ placement

    def _locate(self, scores: Mapping[str, float]) -> tuple[Cell, dict[str, int]]:
        cell, flags = [], {}
        for t, spec in zip(self._measures, self._specs, strict=True):
            i, flag = spec.index(scores[t])
            cell.append(i)
            flags[t] = flag
        return tuple(cell), flags

    def cell_of(self, scores: Mapping[str, float]) -> Cell:
        """The cell that a model with these scores falls in.

        Args:
            scores: Task → score; needs at least the tasks that give the cell.

        Returns:
            The cell, one bin index per task in :attr:`measure_tasks`.

        Raises:
            ValueError: When a needed task is missing or a score is not a finite number in [0, 1].
        """
        return self._locate(check_score_map(self._measures, scores))[0]

    def validate_offer(self, model_id: str, scores: Mapping[str, float]) -> dict[str, float]:
        """Check an offer without changing the archive.

        Args:
            model_id: The model's id.
            scores: Task → score on every task.

        Returns:
            The scores as floats, keyed by the run's tasks in order (extra tasks dropped).

        Raises:
            TypeError: When the id is not a non-empty string or a score is not a number.
            ValueError: When a task is missing, a score is not a finite number in [0, 1], or the id is
                already held here with other scores (each new model needs a new id).
        """
        if not isinstance(model_id, str) or not model_id:
            raise TypeError(f"model_id must be a non-empty string, got {model_id!r}")
        checked = check_score_map(self._tasks, scores, who=f"score of model {model_id!r}")
        held = self._where.get(model_id)
        if held is not None and self._cells[held].scores != checked:
            raise ValueError(
                f"model {model_id!r} is already in the archive of task {self._task!r} with scores "
                f"{self._cells[held].scores!r}, now offered with {checked!r}; give each new model a new id"
            )
        return checked

    def add(self, model_id: str, scores: Mapping[str, float]) -> AddResult:
        """Offer a model: it takes its cell if empty or if its quality is strictly greater.

        Ties keep the incumbent. Scores outside a task's bin range go to the edge cell and are counted
        in :attr:`out_of_range`. Offering a held model again with the same scores is a no-op that
        returns NOT_ADDED.

        Args:
            model_id: The model's id.
            scores: Task → score in [0, 1] on every task (extra tasks are ignored).

        Returns:
            What happened (see :class:`AddResult`).

        Raises:
            TypeError: When the id is not a non-empty string or a score is not a number.
            ValueError: When a task is missing, a score is NaN, infinite or outside [0, 1], or the id is
                already held here with other scores.
        """
        checked = self.validate_offer(model_id, scores)
        cell, flags = self._locate(checked)
        for t, flag in flags.items():
            if flag:
                self._out_of_range[t]["below" if flag < 0 else "above"] += 1
        self._stats["offers"] += 1
        quality = checked[self._task]
        incumbent = self._cells.get(cell)
        incumbent_quality = None if incumbent is None else incumbent.scores[self._task]
        displaced = None
        if incumbent is None:
            status = AddStatus.NEW
        elif quality > incumbent.scores[self._task]:
            status = AddStatus.IMPROVED
            displaced = incumbent.model_id
            del self._where[displaced]
        else:
            status = AddStatus.NOT_ADDED
        if status.added:
            self._place(cell, Elite(model_id=model_id, scores=checked), self._next_order)
            self._next_order += 1
        self._stats[status.value] += 1
        return AddResult(
            status=status,
            cell=cell,
            quality=quality,
            displaced=displaced,
            incumbent_quality=incumbent_quality,
            out_of_range=flags,
        )

    def _place(self, cell: Cell, elite: Elite, order: int) -> None:
        self._cells[cell] = elite
        self._order[cell] = order
        self._where[elite.model_id] = cell

    # ------------------------------------------------------------------------------------ accessors

    def _check_cell(self, cell: Sequence[int]) -> Cell:
        dims = self.dims
        c = tuple(cell)
        if len(c) != len(dims) or not all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < d
            for i, d in zip(c, dims, strict=True)
        ):
            raise ValueError(
                f"cell {cell!r} is not a cell of the archive of task {self._task!r}: expected "
                f"{len(dims)} integer index(es) below {dims!r} (one per task {list(self._measures)!r})"
            )
        return tuple(int(i) for i in c)

    def get(self, cell: Sequence[int]) -> Elite | None:
        """The elite of a cell.

        Args:
            cell: One bin index per task in :attr:`measure_tasks`.

        Returns:
            A copy of the elite, or ``None`` if the cell is empty.

        Raises:
            ValueError: When ``cell`` is not a cell of this grid.
        """
        elite = self._cells.get(self._check_cell(cell))
        return None if elite is None else _copy(elite)

    def cells(self) -> dict[Cell, Elite]:
        """Filled cell → elite (copies), sorted by cell."""
        return {c: _copy(self._cells[c]) for c in sorted(self._cells)}

    def elites(self) -> list[Elite]:
        """The elites (copies), sorted by cell, so the order does not depend on insertion history."""
        return [_copy(self._cells[c]) for c in sorted(self._cells)]

    def model_ids(self) -> list[str]:
        """The ids of the elites, sorted by cell (each id holds at most one cell of an archive)."""
        return [self._cells[c].model_id for c in sorted(self._cells)]

    def quality(self, elite: Elite) -> float:
        """An elite's quality in this archive (its score on :attr:`task`)."""
        return elite.scores[self._task]

    def best(self) -> Elite | None:
        """The elite with the highest quality.

        Ties go to the elite placed earliest (the longest-standing one), which :meth:`to_dict` records,
        so the answer is the same after a resume.

        Returns:
            A copy of the best elite, or ``None`` if the archive is empty.
        """
        if not self._cells:
            return None
        cell = min(self._cells, key=lambda c: (-self._cells[c].scores[self._task], self._order[c]))
        return _copy(self._cells[cell])

    def quality_grid(self) -> np.ndarray:
        """The qualities as an array of shape :attr:`dims`, NaN in empty cells (for heatmaps)."""
        grid = np.full(self.dims, np.nan)
        for cell, elite in self._cells.items():
            grid[cell] = elite.scores[self._task]
        return grid

    @property
    def out_of_range(self) -> dict[str, dict[str, int]]:
        """Task → ``{"below": n, "above": n}``: scores outside the bin range, over all offers."""
        return {t: dict(c) for t, c in self._out_of_range.items()}

    @property
    def stats(self) -> dict[str, int]:
        """Counts of offers and of their outcomes (``offers``, ``new``, ``improved``, ``not_added``)."""
        return dict(self._stats)

    # -------------------------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` rebuilds an equal archive (floats round-trip exactly)."""
        return {
            "format": ARCHIVE_FORMAT,
            "task": self._task,
            "tasks": list(self._tasks),
            "bin_specs": {t: s.to_dict() for t, s in zip(self._measures, self._specs, strict=True)},
            "elites": [
                {
                    "cell": list(c),
                    "model_id": self._cells[c].model_id,
                    "scores": dict(self._cells[c].scores),
                    "order": self._order[c],
                }
                for c in sorted(self._cells)
            ],
            "next_order": self._next_order,
            "out_of_range": self.out_of_range,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Archive:
        """Rebuild an archive written by :meth:`to_dict`.

        Args:
            data: The dict (for example read back from JSON).

        Returns:
            The archive, equal to the one that was written.

        Raises:
            ValueError: When the dict is malformed or inconsistent (an elite whose scores do not fall in
                its recorded cell, a repeated cell or id, bad counters).
        """
        what = "Archive"
        fmt = require_key(data, "format", what)
        if fmt != ARCHIVE_FORMAT:
            raise ValueError(f"archive dict has format {fmt!r}; this version reads {ARCHIVE_FORMAT!r}")
        specs = {t: BinSpec.from_dict(s) for t, s in require_key(data, "bin_specs", what).items()}
        archive = cls(
            task=require_key(data, "task", what), tasks=require_key(data, "tasks", what), bin_specs=specs
        )
        next_order = require_key(data, "next_order", what)
        if not isinstance(next_order, int) or next_order < 0:
            raise ValueError(f"archive dict: next_order must be an integer >= 0, got {next_order!r}")
        orders: set[int] = set()
        for entry in require_key(data, "elites", what):
            model_id = require_key(entry, "model_id", "Archive elite")
            scores = archive.validate_offer(model_id, require_key(entry, "scores", "Archive elite"))
            if model_id in archive:
                raise ValueError(f"archive dict holds model {model_id!r} twice; an id holds one cell")
            cell = archive._check_cell(require_key(entry, "cell", "Archive elite"))
            if archive._locate(scores)[0] != cell or cell in archive._cells:
                raise ValueError(
                    f"archive dict puts model {model_id!r} in cell {cell!r}, but its scores fall in "
                    f"{archive._locate(scores)[0]!r} or the cell is taken twice; the dict does not match "
                    "its bin specs"
                )
            order = require_key(entry, "order", "Archive elite")
            if not isinstance(order, int) or not 0 <= order < next_order or order in orders:
                raise ValueError(
                    f"archive dict: elite {model_id!r} has order {order!r}; expected a distinct integer "
                    f"in [0, {next_order})"
                )
            orders.add(order)
            archive._place(cell, Elite(model_id=model_id, scores=scores), order)
        archive._next_order = next_order
        counters = require_key(data, "out_of_range", what)
        if set(counters) != set(archive._measures):
            raise ValueError(
                f"archive dict: out_of_range has tasks {sorted(counters)!r}, expected "
                f"{sorted(archive._measures)!r}"
            )
        for t in archive._measures:
            archive._out_of_range[t] = {
                k: _count(counters[t], k, f"out_of_range[{t!r}]") for k in ("below", "above")
            }
        stats = require_key(data, "stats", what)
        archive._stats = {k: _count(stats, k, "stats") for k in archive._stats}
        return archive

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Archive):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable


def _count(data: Mapping[str, Any], key: str, where: str) -> int:
    value = require_key(data, key, f"Archive {where}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"archive dict: {where}[{key!r}] must be an integer >= 0, got {value!r}")
    return value
