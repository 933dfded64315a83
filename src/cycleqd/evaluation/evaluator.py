"""Scoring a model on every task: what the engine calls for each child."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import SPLIT_NAMES, SPLITS, Backend, Task, TaskResult
from cycleqd.evaluation.cache import ResultCache
from cycleqd.evaluation.spec import check_compatible


class Evaluator:
    """Runs tasks on models held by one backend, with an optional result cache.

    Args:
        tasks: The tasks (unique names).
        backend: The backend that holds the current model.
        cache: Cache of results per (fingerprint, task, split).

    Raises:
        ConfigError: When names repeat or a task needs a text backend the backend is not.
    """

    def __init__(self, tasks: Sequence[Task], backend: Backend, *, cache: ResultCache | None = None) -> None:
        names = [t.name for t in tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"task name(s) {', '.join(dupes)} appear more than once; names must be unique")
        check_compatible(tasks, backend)
        self._tasks = {t.name: t for t in tasks}
        self.backend = backend
        self.cache = cache
        self._prepared: set[tuple[str, str]] = set()

    def close(self) -> None:
        """Close the backend (freeing its model) and the result cache; the evaluator is done."""
        self.backend.close()
        if self.cache is not None:
            self.cache.close()

    @property
    def tasks(self) -> dict[str, Task]:
        """Tasks by name, in order."""
        return dict(self._tasks)

    def select(self, names: Sequence[str] | None) -> list[Task]:
        """The named tasks (all when ``None``).

        Args:
            names: Task names.

        Returns:
            The tasks, in the given order.

        Raises:
            ConfigError: For an unknown name.
        """
        if names is None:
            return list(self._tasks.values())
        unknown = [n for n in names if n not in self._tasks]
        if unknown:
            raise ConfigError(f"unknown task(s) {', '.join(unknown)}; the tasks are {', '.join(self._tasks)}")
        return [self._tasks[n] for n in names]

    def prepare(self, split: str, *, tasks: Sequence[str] | None = None) -> None:
        """Run the tasks' one-off preparation (reference answers) for a split.

        Args:
            split: ``validation``, ``select`` or ``test``.
            tasks: Task names (default: all).

        Raises:
            CycleQDError: When a task's data cannot be used.
        """
        _check_split(split)
        for task in self.select(tasks):
            if (task.name, split) not in self._prepared:
                task.prepare(split)
                self._prepared.add((task.name, split))

    def signature(self, task: Task) -> str:
        """The cache signature of a task's results on this backend."""
        blob = f"{task.signature}|{self.backend.signature}"
        return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()

    def evaluate(
        self,
        weights: Mapping[str, torch.Tensor],
        *,
        fingerprint: str,
        split: str,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, TaskResult]:
        """Score one model on the tasks.

        Cached results are reused; the weights are loaded into the backend once, and only when some
        task is not cached. Exceptions from tasks propagate (the caller records the model as failed).

        Args:
            weights: The model's full weights.
            fingerprint: Their fingerprint.
            split: ``validation``, ``select`` or ``test``.
            tasks: Task names (default: all).

        Returns:
            Results by task name, in task order.
        """
        _check_split(split)
        selected = self.select(tasks)
        results: dict[str, TaskResult] = {}
        todo = []
        for task in selected:
            cached = None
            if self.cache is not None:
                cached = self.cache.get(fingerprint, task.name, split, signature=self.signature(task))
            if cached is not None:
                results[task.name] = cached
            else:
                todo.append(task)
        if todo:
            self.prepare(split, tasks=[t.name for t in todo])
            if self.backend.fingerprint != fingerprint:
                self.backend.load(weights, fingerprint=fingerprint)
            # Tasks that can (built-in kinds) generate now and judge in the background, so that the
            # sandboxed checks of one task run while the model answers the next one.
            with ThreadPoolExecutor(max_workers=1) as judges:
                pending: list[tuple[Task, Future[TaskResult]]] = []
                for task in todo:
                    begin = getattr(task, "begin", None)
                    if begin is None:
                        self._keep(
                            task, task.evaluate(self.backend, split=split), fingerprint, split, results
                        )
                    else:
                        pending.append((task, judges.submit(begin(self.backend, split=split))))
                for task, future in pending:
                    self._keep(task, future.result(), fingerprint, split, results)
        return {t.name: results[t.name] for t in selected}

    def _keep(
        self, task: Task, result: TaskResult, fingerprint: str, split: str, results: dict[str, TaskResult]
    ) -> None:
        if result.task != task.name or result.split != split:
            raise RuntimeError(
                f"task {task.name} returned a result for task {result.task!r}, split {result.split!r}"
            )
        results[task.name] = result
        if self.cache is not None:
            self.cache.put(fingerprint, result, signature=self.signature(task))

    def score_predictions(
        self,
        predictions: Mapping[str, Mapping[str, Any]],
        *,
        split: str,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, TaskResult]:
        """Score saved outputs through the tasks' checkers, without a model.

        Args:
            predictions: Task name → item id → saved output.
            split: ``validation``, ``select`` or ``test``.
            tasks: Task names (default: those in ``predictions``).

        Returns:
            Results by task name.
        """
        _check_split(split)
        selected = self.select(
            list(tasks) if tasks is not None else [n for n in self._tasks if n in predictions]
        )
        self.prepare(split, tasks=[t.name for t in selected])
        return {t.name: t.score_predictions(predictions.get(t.name, {}), split=split) for t in selected}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use {SPLIT_NAMES}")
