"""Whole evaluations from a config file: a model folder, or a file of saved predictions.

This is the logic behind ``cycleqd eval``. Everything that can be checked without the model (config,
data, task selection, split, reference answers, predictions) is checked before the model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import SPLIT_NAMES, SPLITS, Task, TaskResult
from cycleqd.evaluation.cache import ResultCache
from cycleqd.evaluation.data import resolve_path
from cycleqd.evaluation.evaluator import Evaluator
from cycleqd.evaluation.predictions import check_predictions, read_predictions
from cycleqd.evaluation.spec import TaskSpec, build_backend, build_tasks, check_compatible, load_eval_config
from cycleqd.evaluation.tasks.common import BuiltinTask

Progress = Callable[[str], None]


@dataclass
class EvalReport:
    """Scores of one evaluation.

    Attributes:
        split: The split scored.
        results: Results by task.
        model: The model folder (``None`` when scoring predictions).
        fingerprint: The model's fingerprint, when computed.
        predictions: The predictions file, when scoring one.
        isolation: Sandbox isolation in effect (names), when a sandbox was used.
    """

    split: str
    results: dict[str, TaskResult]
    model: str | None = None
    fingerprint: str | None = None
    predictions: str | None = None
    isolation: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready scores: per task the score, the number of items and of correct ones."""
        return {
            "split": self.split,
            "model": self.model,
            "predictions": self.predictions,
            "fingerprint": self.fingerprint,
            "scores": {name: r.score for name, r in self.results.items()},
            "tasks": {
                name: {
                    "score": r.score,
                    "items": len(r.items),
                    "correct": sum(1 for i in r.items if i.correct),
                }
                for name, r in self.results.items()
            },
            "sandbox_isolation": self.isolation,
        }


def _select(specs: list[TaskSpec], names: Sequence[str] | None) -> list[TaskSpec]:
    if not names:
        return specs
    known = {s.name: s for s in specs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; the config's tasks are {', '.join(known)}")
    return [known[n] for n in names]


def _check_items(tasks: Sequence[Task], split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use {SPLIT_NAMES}")
    empty = [t.name for t in tasks if isinstance(t, BuiltinTask) and not t.items(split)]
    if empty:
        raise ConfigError(
            f"task(s) {', '.join(empty)} have no items in split {split}; add items or pick another split"
        )


def _isolation(tasks: Sequence[Task]) -> list[str]:
    for t in tasks:
        if isinstance(t, BuiltinTask) and t.uses_sandbox:
            return sorted(t.context.sandbox.probe().active)
    return []


def evaluate_model(
    model: str | Path,
    *,
    config: str | Path,
    split: str = "test",
    tasks: Sequence[str] | None = None,
    cache_file: str | Path | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Score a model folder on a config's tasks.

    Args:
        model: A Hugging Face model folder (or a weights file/folder for the ``weights`` backend).
        config: The run config (its ``tasks`` and ``evaluation`` sections are used).
        split: ``validation``, ``select`` or ``test``.
        tasks: Names of the tasks to run (default: all).
        cache_file: Result cache (default: ``evaluation.cache_file`` when ``evaluation.cache`` is on).
        progress: Called with a line of text as work advances.

    Returns:
        The scores.

    Raises:
        CycleQDError: For bad config, data, model or predictions, before the model is loaded where
            possible.
    """
    from cycleqd.weights import fingerprint_tensors, open_model

    say = progress or (lambda _msg: None)
    specs, evaluation, root = load_eval_config(config)
    built = build_tasks(_select(specs, tasks), root=root, evaluation=evaluation)
    _check_items(built, split)
    source = open_model(model)
    if evaluation.backend == "weights":
        from cycleqd.evaluation.base import WeightsBackend

        check_compatible(built, WeightsBackend())
    for t in built:
        say(f"preparing {t.name} ({split})")
        t.prepare(split)
    cache = None
    if cache_file is None and evaluation.cache and evaluation.cache_file:
        cache_file = resolve_path(evaluation.cache_file, root=root)
    if cache_file is not None:
        cache = ResultCache(cache_file)
    fingerprint = None
    if cache is not None:
        say("fingerprinting the model")
        fingerprint = fingerprint_tensors(source)
    say(f"loading {source.path}")
    backend = build_backend(evaluation, model_dir=source.path if source.path.is_dir() else source.path.parent)
    evaluator = Evaluator(built, backend, cache=cache)
    results: dict[str, TaskResult] = {}
    try:
        for t in built:
            say(f"scoring {t.name} ({split})")
            results.update(
                evaluator.evaluate(
                    source, fingerprint=fingerprint or f"path:{source.path}", split=split, tasks=[t.name]
                )
            )
    finally:
        evaluator.close()
    return EvalReport(
        split=split,
        results=results,
        model=str(source.path),
        fingerprint=fingerprint,
        isolation=_isolation(built),
    )


def score_predictions_file(
    predictions: str | Path,
    *,
    config: str | Path,
    split: str = "test",
    tasks: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Score saved outputs through the tasks' checkers and sandbox, without a model.

    Args:
        predictions: JSONL file of ``{"task", "id", "output"}`` objects.
        config: The run config.
        split: The split the predictions belong to.
        tasks: Tasks to score (default: those named in the predictions).
        progress: Called with a line of text as work advances.

    Returns:
        The scores (items without a prediction score 0).

    Raises:
        CycleQDError: For bad config, data or predictions.
    """
    say = progress or (lambda _msg: None)
    specs, evaluation, root = load_eval_config(config)
    preds = read_predictions(predictions)
    names = list(tasks) if tasks else [s.name for s in specs if s.name in preds]
    if not names:
        raise ConfigError(f"{predictions} holds no prediction for any task of the config")
    selected = _select(specs, names)
    built = build_tasks(selected, root=root, evaluation=evaluation)
    _check_items(built, split)
    by_name = {t.name: t for t in built}
    stray = sorted(set(preds) - {s.name for s in specs})
    if stray:
        raise ConfigError(f"predictions name task(s) {', '.join(stray)} that the config lacks")
    check_predictions({n: preds[n] for n in by_name if n in preds}, by_name, split=split)
    results: dict[str, TaskResult] = {}
    for t in built:
        say(f"scoring {t.name} ({split})")
        t.prepare(split)
        try:
            results[t.name] = t.score_predictions(preds.get(t.name, {}), split=split)
        except NotImplementedError as exc:
            raise ConfigError(f"{exc}; score it with a model instead") from None
    return EvalReport(split=split, results=results, predictions=str(predictions), isolation=_isolation(built))
