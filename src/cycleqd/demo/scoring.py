"""Scoring the demo's models on its tasks, outside the engine (base, experts, baselines, finals).

The tasks are built from the same entries as the CycleQD run's config, so they have the same
signatures: verdicts memoised while scoring baselines are reused by the engine and the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cycleqd.evaluation.base import SPLITS
from cycleqd.evaluation.cache import ResultCache
from cycleqd.evaluation.evaluator import Evaluator
from cycleqd.evaluation.spec import EvaluationSpec, TaskSpec, build_backend, build_tasks
from cycleqd.weights import fingerprint_tensors, open_model


def average(scores: Mapping[str, float]) -> float:
    """The mean of a model's task scores."""
    return sum(scores.values()) / len(scores)


class Scorer:
    """Scores models given as folders or in-memory weights, with a result cache.

    Args:
        tasks: Task entries (``tasks:`` of a run config).
        evaluation: Evaluation settings (``evaluation:`` of a run config).
        base_dir: A model folder of the right architecture (the resident model is built from it).
        cache_file: SQLite cache of results by (fingerprint, task, split).
        root: Folder relative data paths are resolved against.
    """

    def __init__(
        self,
        tasks: Sequence[Mapping[str, Any]],
        evaluation: Mapping[str, Any],
        *,
        base_dir: Path,
        cache_file: Path,
        root: Path,
    ) -> None:
        spec = EvaluationSpec.model_validate(dict(evaluation))
        built = build_tasks([TaskSpec.model_validate(dict(t)) for t in tasks], root=root, evaluation=spec)
        self.names = [t.name for t in built]
        backend = build_backend(spec, model_dir=base_dir)
        self.evaluator = Evaluator(built, backend, cache=ResultCache(cache_file))

    def prepare(self) -> None:
        """Check every task's data and reference answers (before long work)."""
        for split in SPLITS:
            self.evaluator.prepare(split)

    def scores(
        self, weights: Mapping[str, torch.Tensor], *, split: str, fingerprint: str | None = None
    ) -> dict[str, float]:
        """Task → score of a model on a split.

        Args:
            weights: The model's weights.
            split: ``validation`` or ``test``.
            fingerprint: Their fingerprint (computed when not given).

        Returns:
            The scores, in task order.
        """
        fp = fingerprint or fingerprint_tensors(weights)
        results = self.evaluator.evaluate(weights, fingerprint=fp, split=split)
        return {name: float(results[name].score) for name in self.names}

    def scores_of(self, folder: Path, *, split: str) -> dict[str, float]:
        """Task → score of a model folder on a split."""
        return self.scores(open_model(folder), split=split)

    def close(self) -> None:
        """Close the evaluator: its resident model and the result cache."""
        self.evaluator.close()
