"""Binning of task scores into archive cells, and the paper's rule for the bin ranges.

In the archive of task k, the scores on the other tasks place a model in a cell: each of those scores
is cut into equal-width bins by a :class:`BinSpec`. By default the range of task t runs from 0.85 × the
weakest expert's score on t to 1.15 × the strongest expert's score on t, clipped to [0, 1]
(:func:`paper_ranges`); explicit ranges override it (:func:`make_bin_specs`).
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from cycleqd.qd._checks import check_score, check_tasks

#: Ranges narrower than this are degenerate and get widened (see :func:`paper_ranges`).
MIN_RANGE_WIDTH = 1e-6
#: How far a degenerate range is widened on each side (before clipping to [0, 1]).
DEGENERATE_MARGIN = 0.05


class DegenerateRangeWarning(UserWarning):
    """A task's bin range had (almost) no width and was widened."""


@dataclass(frozen=True)
class BinSpec:
    """How the scores of one task are cut into bins.

    Edge rule: the B bins have equal width w = (high − low) / B and edges ``edges()`` =
    low, low + w, ..., high. Bin i holds the values in [edge_i, edge_{i+1}); the last bin also holds
    ``high`` itself. A value below ``low`` goes to bin 0 and a value above ``high`` to bin B − 1; both
    are flagged (−1 below, +1 above) so that the archive can count them.

    Attributes:
        task: The task whose scores are binned.
        low: Lower end of the range.
        high: Upper end of the range (greater than ``low``).
        bins: Number of bins B (the paper uses 15).
    """

    task: str
    low: float
    high: float
    bins: int = 15

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise TypeError(f"BinSpec.task must be a non-empty task name, got {self.task!r}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(
                    f"BinSpec for task {self.task!r}: {name} must be a finite number, got {value!r}"
                )
            object.__setattr__(self, name, float(value))
        if not self.low < self.high:
            raise ValueError(
                f"BinSpec for task {self.task!r}: low must be below high, got low={self.low!r}, "
                f"high={self.high!r}; swap them or widen the range"
            )
        if isinstance(self.bins, bool) or not isinstance(self.bins, Integral) or self.bins < 1:
            raise ValueError(
                f"BinSpec for task {self.task!r}: bins must be an integer >= 1 (the paper uses 15), "
                f"got {self.bins!r}"
            )
        object.__setattr__(self, "bins", int(self.bins))

    def edges(self) -> np.ndarray:
        """The B + 1 bin edges, from ``low`` to ``high`` (both exact).

        Returns:
            A float64 array of shape (bins + 1,).
        """
        return np.linspace(self.low, self.high, self.bins + 1)

    def index(self, value: float) -> tuple[int, int]:
        """The bin of a value, and whether it lay outside the range.

        Args:
            value: A score (infinite values count as out of range).

        Returns:
            ``(bin, flag)``: the bin index in [0, bins) and −1 if the value was below ``low``, +1 if
            above ``high``, 0 if inside (``high`` itself is inside, in the last bin).

        Raises:
            ValueError: When the value is NaN or not a number.
        """
        if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
            raise ValueError(f"cannot bin {value!r} for task {self.task!r}: expected a number, not NaN")
        x = float(value)
        if x < self.low:
            return 0, -1
        if x > self.high:
            return self.bins - 1, 1
        # Searching the same edges that edges() returns keeps the two consistent to the last bit.
        i = bisect.bisect_right(self.edges().tolist(), x) - 1
        return min(i, self.bins - 1), 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (floats round-trip exactly through JSON)."""
        return {"task": self.task, "low": self.low, "high": self.high, "bins": self.bins}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BinSpec:
        """Rebuild a spec written by :meth:`to_dict`.

        Args:
            data: The dict.

        Returns:
            The spec.

        Raises:
            ValueError: When a key is missing or a value is invalid.
        """
        try:
            return cls(task=data["task"], low=data["low"], high=data["high"], bins=data["bins"])
        except KeyError as exc:
            raise ValueError(
                f"BinSpec dict lacks key {exc.args[0]!r}; expected task, low, high, bins"
            ) from None


def _check_factor(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (paper: 0.85 and 1.15), got {value!r}")
    return float(value)


def paper_ranges(
    expert_scores: Mapping[str, Mapping[str, float]],
    *,
    low_factor: float = 0.85,
    high_factor: float = 1.15,
    tasks: Sequence[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """The paper's bin range for every task, from the experts' scores.

    For task t the range is (low_factor × min over experts of the score on t, high_factor × max over
    experts), clipped to [0, 1]. A range narrower than ``MIN_RANGE_WIDTH`` (for example when every
    expert scores 0 on t) is widened to [max(0, lo − 0.05), min(1, hi + 0.05)] and a
    :class:`DegenerateRangeWarning` naming the task is issued.

    Args:
        expert_scores: Expert name → task → score in [0, 1]. Every expert must score every task.
        low_factor: Factor on the weakest expert's score.
        high_factor: Factor on the strongest expert's score (at least ``low_factor``).
        tasks: The tasks to compute, in order; defaults to the tasks of the first expert.

    Returns:
        Task → (low, high), in the order of ``tasks``.

    Raises:
        ValueError: When there are no experts, an expert lacks a task, a score is not a finite number in
            [0, 1], or a factor is invalid.
    """
    lo_f = _check_factor("low_factor", low_factor)
    hi_f = _check_factor("high_factor", high_factor)
    if hi_f < lo_f:
        raise ValueError(f"high_factor ({hi_f}) must be at least low_factor ({lo_f})")
    if not expert_scores:
        raise ValueError("paper_ranges needs the scores of at least one expert; got none")
    names = check_tasks(tasks if tasks is not None else list(next(iter(expert_scores.values()))))
    ranges: dict[str, tuple[float, float]] = {}
    for task in names:
        values = []
        for expert, scores in expert_scores.items():
            if task not in scores:
                raise ValueError(
                    f"expert {expert!r} has no score on task {task!r}; evaluate every expert on every task"
                )
            values.append(check_score(task, scores[task], who=f"score of expert {expert!r}"))
        lo = min(1.0, max(0.0, lo_f * min(values)))
        hi = min(1.0, max(0.0, hi_f * max(values)))
        if hi - lo < MIN_RANGE_WIDTH:
            new_lo, new_hi = max(0.0, lo - DEGENERATE_MARGIN), min(1.0, hi + DEGENERATE_MARGIN)
            warnings.warn(
                f"bin range for task {task!r} is degenerate ({lo!r}, {hi!r}): the experts' scores "
                f"{values!r} are (nearly) equal; widened to ({new_lo!r}, {new_hi!r}). Give an explicit "
                "range for this task to choose another one.",
                DegenerateRangeWarning,
                stacklevel=2,
            )
            lo, hi = new_lo, new_hi
        ranges[task] = (lo, hi)
    return ranges


def make_bin_specs(
    tasks: Sequence[str],
    *,
    bins: int = 15,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    expert_scores: Mapping[str, Mapping[str, float]] | None = None,
    low_factor: float = 0.85,
    high_factor: float = 1.15,
) -> dict[str, BinSpec]:
    """One :class:`BinSpec` per task: explicit ranges where given, else the paper's rule.

    Args:
        tasks: All tasks, in the run's order.
        bins: Bins per task (the paper uses 15).
        ranges: Task → (low, high) overriding the paper's rule for that task.
        expert_scores: Expert name → task → score; needed for every task without an explicit range.
        low_factor: See :func:`paper_ranges`.
        high_factor: See :func:`paper_ranges`.

    Returns:
        Task → spec, in the order of ``tasks``.

    Raises:
        ValueError: When ``ranges`` names an unknown task, a task has neither an explicit range nor
            expert scores, or a range or score is invalid.
    """
    names = check_tasks(tasks)
    explicit = dict(ranges or {})
    unknown = [t for t in explicit if t not in names]
    if unknown:
        raise ValueError(f"ranges name unknown task(s) {unknown!r}; the tasks are {list(names)!r}")
    derived = [t for t in names if t not in explicit]
    if derived:
        if expert_scores is None:
            raise ValueError(
                f"no bin range for task(s) {derived!r}: give ranges for them or expert_scores to use the "
                "paper's rule (0.85 × weakest expert, 1.15 × strongest)"
            )
        explicit.update(
            paper_ranges(expert_scores, low_factor=low_factor, high_factor=high_factor, tasks=derived)
        )
    specs: dict[str, BinSpec] = {}
    for t in names:
        rng = explicit[t]
        try:
            low, high = rng
        except (TypeError, ValueError):
            raise ValueError(f"range for task {t!r} must be a pair (low, high), got {rng!r}") from None
        specs[t] = BinSpec(task=t, low=low, high=high, bins=bins)
    return specs
