"""Choosing a run's recommended model: a few candidates by validation, the best of them on ``select``.

The validation split drives evolution, so the elite with the best validation average is the one whose
score is most inflated by the noise of that split: among many elites the winner of a noisy contest
loses most when scored again. A second split that evolution never saw, ``select``, scores a handful of
candidates (the ``k`` best by validation average, and the aggregate) and picks the best there. Only
the select scores can decide, then the validation scores break ties; the test split is never read.
Without a select split the choice falls back on validation, and the run says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def mean_score(scores: Mapping[str, float]) -> float:
    """The average of a model's task scores (0 for none)."""
    return sum(scores.values()) / len(scores) if scores else 0.0


@dataclass(frozen=True)
class Candidate:
    """A model the recommendation may be.

    Attributes:
        model_id: Its id in the run registry.
        validation: Task → validation score.
        select: Task → select score (``None`` without a select split).
    """

    model_id: str
    validation: Mapping[str, float]
    select: Mapping[str, float] | None = None


def top_by_validation(scores: Mapping[str, Mapping[str, float]], k: int) -> list[str]:
    """The ``k`` model ids with the highest validation average (ties: the earlier in ``scores``).

    Args:
        scores: Model id → task → validation score, in the order that breaks ties.
        k: How many.

    Returns:
        At most ``k`` ids, best first.

    Raises:
        ValueError: If ``k`` is below 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return sorted(scores, key=lambda m: -mean_score(scores[m]))[:k]  # a stable sort keeps ties in order


def choose(candidates: Sequence[Candidate], *, split: str) -> Candidate:
    """The recommended candidate: best average on ``split``, then on validation, then the earliest.

    Args:
        candidates: The candidates, in a fixed order.
        split: ``select``, or ``validation`` when the tasks have no select split.

    Returns:
        The chosen candidate.

    Raises:
        ValueError: If there are no candidates, the split is neither select nor validation, or a
            candidate lacks select scores.
    """
    if not candidates:
        raise ValueError("there are no candidates to choose from")
    if split not in ("select", "validation"):
        raise ValueError(f"the choice is made on select or validation, never on {split!r}")

    def key(pair: tuple[int, Candidate]) -> tuple[float, float, int]:
        index, c = pair
        if split == "select":
            if c.select is None:
                raise ValueError(f"candidate {c.model_id} has no select scores")
            primary = mean_score(c.select)
        else:
            primary = mean_score(c.validation)
        return (primary, mean_score(c.validation), -index)

    return max(enumerate(candidates), key=key)[1]
