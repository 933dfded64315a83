"""Validation shared by the qd modules (task lists and scores); messages say what to fix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any


def check_tasks(tasks: Sequence[str], *, minimum: int = 1) -> tuple[str, ...]:
    """Check a list of task names and return it as a tuple.

    Args:
        tasks: Task names, in the run's order.
        minimum: The fewest tasks allowed.

    Returns:
        The names as a tuple.

    Raises:
        TypeError: When ``tasks`` is a single string or holds something other than strings.
        ValueError: When a name is empty or repeated, or there are fewer than ``minimum`` names.
    """
    if isinstance(tasks, str):
        raise TypeError(
            f"tasks must be a list of task names, not the single string {tasks!r}; write [{tasks!r}]"
        )
    names = tuple(tasks)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"every task name must be a non-empty string; got {name!r} in {list(names)!r}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"task {name!r} appears more than once in {list(names)!r}; list each task once")
        seen.add(name)
    if len(names) < minimum:
        raise ValueError(f"expected at least {minimum} task(s), got {len(names)}: {list(names)!r}")
    return names


def check_score(task: str, value: object, *, who: str = "score") -> float:
    """Check that one score is a finite real number in [0, 1].

    Args:
        task: The task the score belongs to (for the message).
        value: The score.
        who: What the score is (for the message), such as ``"score of model 'c12'"``.

    Returns:
        The score as a float.

    Raises:
        TypeError: When the value is not a real number (booleans are refused too).
        ValueError: When the value is NaN, infinite or outside [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{who} on task {task!r} must be a real number in [0, 1], got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(
            f"{who} on task {task!r} is {x!r}; scores must be finite numbers in [0, 1] "
            "(check the task's evaluator, a failed evaluation should score 0.0)"
        )
    if not 0.0 <= x <= 1.0:
        raise ValueError(
            f"{who} on task {task!r} is {x!r}, outside [0, 1]; rescale the task's score to [0, 1]"
        )
    return x


def check_score_map(
    tasks: Sequence[str], scores: Mapping[str, object], *, who: str = "score"
) -> dict[str, float]:
    """Check a task → score mapping that must cover every task; extra tasks are dropped.

    Args:
        tasks: The tasks that must be present, in order.
        scores: The scores.
        who: What the scores are (for messages).

    Returns:
        A new dict task → float score, with the keys in the order of ``tasks``.

    Raises:
        TypeError: When ``scores`` is not a mapping or a score is not a real number.
        ValueError: When a task is missing or a score is NaN, infinite or outside [0, 1].
    """
    if not isinstance(scores, Mapping):
        raise TypeError(f"{who}s must be a mapping task → score, got {type(scores).__name__}")
    missing = [t for t in tasks if t not in scores]
    if missing:
        raise ValueError(
            f"{who}s lack task(s) {missing!r}; give a score for every task {list(tasks)!r} "
            f"(got {sorted(map(str, scores))!r})"
        )
    return {t: check_score(t, scores[t], who=who) for t in tasks}


def check_run_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Check the tasks of a run: at least 2 (:func:`check_tasks` otherwise).

    Args:
        tasks: Task names, in the run's order.

    Returns:
        The names as a tuple.

    Raises:
        TypeError: See :func:`check_tasks`.
        ValueError: When there are fewer than 2 tasks, or a name is empty or repeated.
    """
    names = check_tasks(tasks)
    if len(names) < 2:
        raise ValueError(
            f"an archive needs at least 2 tasks (the quality is the score on one, the cell comes from "
            f"the others); got {list(names)!r}. CycleQD merges experts of K >= 2 tasks"
        )
    return names


def require_key(data: Mapping[str, Any], key: str, what: str) -> Any:
    """``data[key]``, or a ValueError that names the key when it is missing (for ``from_dict``).

    Args:
        data: A dict read back from a checkpoint.
        key: The key.
        what: What the dict describes (for the message).

    Returns:
        The value.

    Raises:
        ValueError: When the key is missing or ``data`` is not a dict.
    """
    try:
        return data[key]
    except (KeyError, TypeError):
        raise ValueError(f"{what} dict lacks key {key!r}; expected the output of to_dict()") from None
