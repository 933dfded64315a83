"""Parent selection: which elites of the active archive are merged (CycleQD, section 3.1).

Elite sampling (paper): for elite j of the archive, γ_j = Π_i (α_lo + n_ij · (α_hi − α_lo)), where
n_ij is the min-max normalised score of elite j on task i over the archive's elites (1 for every elite
when all have the same score on task i), α_lo = 0.5 and α_hi = 0.8; P(j) = γ_j / Σ_k γ_k. Elites that
are good on many tasks are drawn more often. Uniform selection is the paper's ablation.

A new rule is one function ``(scores, *, setting=default, ...) -> probabilities`` and one line in
:data:`SELECTIONS`. Its keyword-only parameters are its settings: the run config's ``selection``
section takes them by name, and a rule checks their values itself (raising
``ValueError``), which the config does before any work by calling it once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, Protocol

import numpy as np

from cycleqd.qd.archive import Archive


class SelectionRule(Protocol):
    """A selection rule: sampling probabilities for the elites of one archive."""

    def __call__(self, scores: np.ndarray, **settings: Any) -> np.ndarray:
        """Probabilities for each elite.

        Args:
            scores: Array (n_elites, K) of each elite's scores on all K tasks.
            **settings: The rule's own keyword-only settings (``alpha_low`` ...).

        Returns:
            Array (n_elites,) of probabilities summing to 1.
        """
        ...


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
        raise ValueError(
            f"scores must be a 2-D array (n_elites, n_tasks) with at least one elite and one task, "
            f"got shape {s.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite; the archive holds only finite scores in [0, 1]")
    return s


def elite_sampling_probabilities(
    scores: np.ndarray, *, alpha_low: float = 0.5, alpha_high: float = 0.8
) -> np.ndarray:
    """The paper's elite-sampling probabilities.

    Args:
        scores: Array (n_elites, K): each elite's scores on all K tasks.
        alpha_low: α_lo, the factor of the weakest elite on a task (> 0; paper: 0.5).
        alpha_high: α_hi, the factor of the strongest elite on a task (>= α_lo; paper: 0.8).

    Returns:
        Array (n_elites,) of probabilities P(j) = γ_j / Σγ.

    Raises:
        ValueError: When ``scores`` is not a non-empty finite 2-D array or the alphas are not
            0 < alpha_low <= alpha_high (finite).
    """
    for name, value in (("alpha_low", alpha_low), ("alpha_high", alpha_high)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0 (paper: 0.5 and 0.8), got {value!r}")
    if alpha_high < alpha_low:
        raise ValueError(
            f"alpha_low ({alpha_low}) must not exceed alpha_high ({alpha_high}): alpha_high must be at "
            "least alpha_low, otherwise weaker elites would be favoured (the paper uses 0.5 and 0.8)"
        )
    s = _check_scores(scores)
    lo = s.min(axis=0)
    span = s.max(axis=0) - lo
    constant = span == 0
    # A task on which all elites score the same gives no preference: n = 1 for all, per the paper.
    normalised = np.where(constant, 1.0, (s - lo) / np.where(constant, 1.0, span))
    gamma = np.prod(alpha_low + normalised * (alpha_high - alpha_low), axis=1)
    return gamma / gamma.sum()


def uniform_probabilities(scores: np.ndarray) -> np.ndarray:
    """Equal probabilities for every elite (the paper's ablation).

    Args:
        scores: Array (n_elites, K) of the elites' scores (only its length is used).

    Returns:
        Array (n_elites,) filled with 1 / n_elites.

    Raises:
        ValueError: When ``scores`` is not a non-empty finite 2-D array.
    """
    n = _check_scores(scores).shape[0]
    return np.full(n, 1.0 / n)


#: Selection rule name → rule. A new rule is one function and one line here.
SELECTIONS: dict[str, SelectionRule] = {
    "elite": elite_sampling_probabilities,
    "uniform": uniform_probabilities,
}


def check_rule_settings(method: str, settings: Mapping[str, Any]) -> None:
    """Let a rule check its settings by drawing once from a one-elite archive.

    Args:
        method: A name in :data:`SELECTIONS`.
        settings: The rule's settings by name.

    Raises:
        ValueError: The rule's own message about a bad setting.
    """
    SELECTIONS[method](np.ones((1, 1)), **settings)


def selection_probabilities(
    archive: Archive, *, method: str = "elite", **settings: Any
) -> tuple[list[str], np.ndarray]:
    """The ids of an archive's elites and the probability of drawing each.

    Args:
        archive: The active archive.
        method: A name in :data:`SELECTIONS`.
        **settings: The rule's settings (``alpha_low``, ``alpha_high`` for ``elite``).

    Returns:
        ``(ids, probabilities)``, ids in the archive's cell order.

    Raises:
        ValueError: When the method is unknown or the archive is empty.
    """
    try:
        rule = SELECTIONS[method]
    except KeyError:
        raise ValueError(
            f"unknown selection method {method!r}; choose one of {sorted(SELECTIONS)!r}"
        ) from None
    elites = archive.elites()
    if not elites:
        raise ValueError(
            f"the archive of task {archive.task!r} is empty; insert the experts before selecting parents"
        )
    scores = np.array([[e.scores[t] for t in archive.tasks] for e in elites], dtype=np.float64)
    probs = rule(scores, **settings)
    return [e.model_id for e in elites], probs


def select_parents(
    archive: Archive,
    *,
    rng: np.random.Generator,
    method: str = "elite",
    n: int = 2,
    **settings: Any,
) -> list[str]:
    """Draw ``n`` distinct elites of an archive, without replacement.

    Only ``rng`` is used, and the elites are taken in cell order, so the same generator state and the
    same archive give the same parents.

    Args:
        archive: The active archive.
        rng: The generator of this draw (seeded from the run seed and the generation).
        method: A name in :data:`SELECTIONS` (``elite`` or ``uniform``).
        n: Number of parents.
        **settings: The rule's settings (``alpha_low``, ``alpha_high`` for ``elite``).

    Returns:
        The parents' ids, in the order drawn.

    Raises:
        ValueError: When the method is unknown, ``n`` < 1, or the archive holds fewer than ``n`` elites.
        TypeError: When ``rng`` is not a ``numpy.random.Generator``.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (CycleQD merges 2 parents), got {n!r}")
    if len(archive) < n:
        raise ValueError(
            f"the archive of task {archive.task!r} holds {len(archive)} elite(s) but {n} distinct parents "
            "were requested; insert more models (for example every expert) before selecting"
        )
    ids, probs = selection_probabilities(archive, method=method, **settings)
    picked = rng.choice(len(ids), size=int(n), replace=False, p=probs)
    return [ids[i] for i in picked]
