"""Model soups of a run's best elites: more candidates for the recommendation.

A soup averages the weights of several models fine-tuned from one base, θ = θ0 + (1/n) Σ_i τ_i
(Wortsman et al., 2022, "Model soups"). The elites a run ends with are such models, and the best of
them by validation differ mostly in directions that fit the noise of that split: their average keeps
what they share and damps the rest. Two soups are offered to the choice beside the elites:

- ``uniform``: the average of the ``final.top_k`` best elites by validation average;
- ``greedy``: the same elites best first, each kept only if the soup's validation average does not
  drop when it is added (the first is always kept).

Like every candidate, a soup becomes the recommendation only if it is the best on ``select``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

SOUP_KINDS = ("uniform", "greedy")
"""The soups a run can offer, in the order they are made."""


def soup_id(kind: str) -> str:
    """The registry id of a soup (``soup-uniform``, ``soup-greedy``)."""
    return f"soup-{kind}"


def greedy_ingredients(
    order: Sequence[str],
    *,
    first_score: float,
    score: Callable[[list[str]], float],
) -> list[str]:
    """The members of a greedy soup.

    Args:
        order: Candidate ids, best first (at least one).
        first_score: The validation average of ``order[0]`` alone.
        score: The validation average of the soup of the given members (called once per candidate
            after the first, with the members kept so far and that candidate).

    Returns:
        The members kept, in ``order``'s order (``[order[0]]`` when no addition helped).

    Raises:
        ValueError: If ``order`` is empty.
    """
    if not order:
        raise ValueError("a soup needs at least one candidate")
    kept, current = [order[0]], first_score
    for candidate in order[1:]:
        trial = score([*kept, candidate])
        if trial >= current:  # ties keep the candidate: the average of more models is the safer one
            kept.append(candidate)
            current = trial
    return kept
