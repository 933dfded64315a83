"""Evaluation layer: tasks, generation backends and the sandbox. Knows models, not archives.

The engine builds an :class:`Evaluator` from a config's ``tasks`` and ``evaluation`` sections and calls
:meth:`Evaluator.evaluate` for each child::

    specs, evaluation, root = load_eval_config("run.yaml")
    tasks = build_tasks(specs, root=root, evaluation=evaluation)
    backend = build_backend(evaluation, model_dir=base_model_dir)
    evaluator = Evaluator(tasks, backend, cache=ResultCache(run_dir / "eval-cache.sqlite"))
    results = evaluator.evaluate(weights, fingerprint=fp, split="validation")   # {task: TaskResult}
"""

from cycleqd.evaluation.base import (
    SPLITS,
    Backend,
    ItemResult,
    Message,
    Prompt,
    Task,
    TaskResult,
    WeightsBackend,
)
from cycleqd.evaluation.cache import ResultCache
from cycleqd.evaluation.evaluator import Evaluator
from cycleqd.evaluation.spec import (
    EvaluationSpec,
    SandboxSpec,
    TaskSpec,
    build_backend,
    build_tasks,
    load_eval_config,
    parse_eval_config,
)

__all__ = [
    "SPLITS",
    "Backend",
    "EvaluationSpec",
    "Evaluator",
    "ItemResult",
    "Message",
    "Prompt",
    "ResultCache",
    "SandboxSpec",
    "Task",
    "TaskResult",
    "TaskSpec",
    "WeightsBackend",
    "build_backend",
    "build_tasks",
    "load_eval_config",
    "parse_eval_config",
]
