from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cycleqd.errors import ConfigError
from cycleqd.evaluation import Evaluator, ItemResult, ResultCache, Task, TaskResult
from cycleqd.evaluation.backends import ScriptedBackend
from cycleqd.evaluation.tasks import ExactMatchTask

WEIGHTS = {"w": torch.zeros(2)}


@pytest.fixture
def em(ctx, data) -> ExactMatchTask:
    items = [{"id": i, "prompt": f"q{i}", "answer": str(i)} for i in range(4)]
    task = ExactMatchTask(name="em", data=data(items), context=ctx)
    task.signature = "em-v1"
    return task


def test_loads_once_and_scores_every_task(em: ExactMatchTask, ctx, data) -> None:
    other = ExactMatchTask(name="other", data=data([{"id": 0, "prompt": "q0", "answer": "0"}]), context=ctx)
    backend = ScriptedBackend({"q0": "0", "q1": "1", "q2": "x", "q3": "3"})
    results = Evaluator([em, other], backend).evaluate(WEIGHTS, fingerprint="child-1", split="validation")
    assert list(results) == ["em", "other"]
    assert results["em"].score == 0.75
    assert results["other"].score == 1.0
    assert backend.loads == ["child-1"]


def test_cache_hits_skip_loading_and_scoring(em: ExactMatchTask, tmp_path: Path) -> None:
    backend = ScriptedBackend({"q0": "0", "q1": "1", "q2": "2", "q3": "x"})
    with ResultCache(tmp_path / "cache.sqlite") as cache:
        evaluator = Evaluator([em], backend, cache=cache)
        first = evaluator.evaluate(WEIGHTS, fingerprint="fp", split="validation")["em"]
        again = evaluator.evaluate(WEIGHTS, fingerprint="fp", split="validation")["em"]
        assert len(backend.calls) == 1
        assert backend.loads == ["fp"]
        assert again == first
        other_child = evaluator.evaluate(WEIGHTS, fingerprint="fp2", split="validation")["em"]
        assert len(backend.calls) == 2
        assert other_child.score == first.score
        assert len(cache) == 2
    # Results survive in the file, for another process.
    with ResultCache(tmp_path / "cache.sqlite") as cache:
        cached = cache.get("fp", "em", "validation", signature=Evaluator([em], backend).signature(em))
        assert cached == first
        assert cached.items[3].reason == "expected '3', got 'x'"


def test_changed_task_or_backend_settings_invalidate_the_cache(em: ExactMatchTask, tmp_path: Path) -> None:
    backend = ScriptedBackend("0")
    with ResultCache(tmp_path / "c.sqlite") as cache:
        evaluator = Evaluator([em], backend, cache=cache)
        evaluator.evaluate(WEIGHTS, fingerprint="fp", split="validation")
        em.signature = "em-v2"
        evaluator.evaluate(WEIGHTS, fingerprint="fp", split="validation")
        assert len(backend.calls) == 2
        evaluator.evaluate(WEIGHTS, fingerprint="fp", split="validation")
        assert len(backend.calls) == 2


def test_splits_are_cached_apart(ctx, data, tmp_path: Path) -> None:
    items = [
        {"id": 0, "prompt": "q0", "answer": "0"},
        {"id": 1, "prompt": "q1", "answer": "1", "split": "test"},
    ]
    task = ExactMatchTask(name="em", data=data(items), context=ctx)
    backend = ScriptedBackend({"q0": "0"})
    with ResultCache(tmp_path / "c.sqlite") as cache:
        evaluator = Evaluator([task], backend, cache=cache)
        assert evaluator.evaluate(WEIGHTS, fingerprint="fp", split="validation")["em"].score == 1.0
        assert evaluator.evaluate(WEIGHTS, fingerprint="fp", split="test")["em"].score == 0.0


class Exploding(Task):
    def evaluate(self, backend, *, split):
        raise RuntimeError("the model produced NaN")


class Liar(Task):
    def evaluate(self, backend, *, split):
        return TaskResult(task="someone-else", split=split, score=1.0)


def test_task_errors_propagate(em: ExactMatchTask) -> None:
    evaluator = Evaluator([em, Exploding(name="boom")], ScriptedBackend("0"))
    with pytest.raises(RuntimeError, match="NaN"):
        evaluator.evaluate(WEIGHTS, fingerprint="fp", split="validation")
    with pytest.raises(RuntimeError, match="returned a result for task 'someone-else'"):
        Evaluator([Liar(name="liar")], ScriptedBackend("0")).evaluate(WEIGHTS, fingerprint="f", split="test")


def test_selection_and_split_errors(em: ExactMatchTask) -> None:
    evaluator = Evaluator([em], ScriptedBackend("0"))
    with pytest.raises(ConfigError, match="unknown task"):
        evaluator.evaluate(WEIGHTS, fingerprint="fp", split="validation", tasks=["nope"])
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        evaluator.evaluate(WEIGHTS, fingerprint="fp", split="train")
    with pytest.raises(ConfigError, match="appear more than once"):
        Evaluator([em, em], ScriptedBackend("0"))


def test_scores_outside_the_unit_interval_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        TaskResult(task="t", split="test", score=1.5)
    with pytest.raises(ValueError, match="not a number"):
        TaskResult(task="t", split="test", score=float("nan"))
    r = TaskResult(
        task="t", split="test", score=0.5, items=[ItemResult(item_id="1", correct=False, score=0.5)]
    )
    assert TaskResult.from_dict(r.to_dict()) == r


def test_predictions_through_the_evaluator(em: ExactMatchTask) -> None:
    evaluator = Evaluator([em], ScriptedBackend("0"))
    results = evaluator.score_predictions({"em": {"0": "0", "1": "1"}}, split="validation")
    assert results["em"].score == 0.5
