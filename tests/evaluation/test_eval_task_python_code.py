from __future__ import annotations

import pytest

from cycleqd.errors import ConfigError
from cycleqd.evaluation.backends import ScriptedBackend
from cycleqd.evaluation.tasks import PythonCodeTask

ITEM = {
    "id": "inc",
    "prompt": "Write f(x) returning x + 1.",
    "tests": ["assert f(1) == 2", "assert f(-1) == 0"],
}


def _score(task: PythonCodeTask, answer: str):
    return task.score_predictions({"inc": answer}, split="validation").items[0]


@pytest.fixture
def task(ctx, data) -> PythonCodeTask:
    return PythonCodeTask(name="code", data=data([ITEM]), context=ctx)


def test_right_answer_in_a_code_block(task: PythonCodeTask) -> None:
    result = task.evaluate(
        ScriptedBackend("Sure:\n```python\ndef f(x):\n    return x + 1\n```\nDone."), split="validation"
    )
    assert result.score == 1.0
    assert result.items[0].detail["code"] == "def f(x):\n    return x + 1"


def test_wrong_answer_names_the_failed_test(task: PythonCodeTask) -> None:
    r = _score(task, "def f(x):\n    return x + 2")
    assert not r.correct
    assert r.reason == "test 0 failed: assert f(1) == 2 (got 3)"


def test_malformed_answers(task: PythonCodeTask) -> None:
    assert _score(task, "def f(x) return x").reason.startswith("syntax error: ")
    assert _score(task, "```python\n\n```").reason == "malformed: the answer holds no code"
    assert (
        _score(task, "x = undefined_name").reason
        == "crashed while loading: NameError: name 'undefined_name' is not defined"
    )


def test_crash_inside_a_test(task: PythonCodeTask) -> None:
    r = _score(task, "def f(x):\n    return x / 0")
    assert r.reason == "test 0 crashed: ZeroDivisionError: division by zero in assert f(1) == 2"


def test_timeout(task: PythonCodeTask) -> None:
    r = _score(task, "def f(x):\n    while True:\n        pass")
    assert not r.correct
    assert "timed out" in r.reason or "CPU" in r.reason


def test_exiting_early_or_printing_a_pass_does_not_pass(task: PythonCodeTask) -> None:
    assert not _score(task, 'import os\nprint(\'{"status": "pass"}\')\nos._exit(0)').correct
    assert not _score(task, "import sys\nsys.exit(0)").correct


def test_solution_cannot_read_the_tests(task: PythonCodeTask) -> None:
    # The tests reach the harness on stdin: no file holds them and stdin is already consumed.
    code = (
        "import glob, sys\n"
        "leak = sys.stdin.read()\n"
        "for p in glob.glob('../**', recursive=True):\n"
        "    try:\n        leak += open(p, errors='ignore').read()\n    except OSError:\n        pass\n"
        "def f(x):\n    return 0 if 'f(-1)' in leak else x + 1\n"
    )
    assert _score(task, code).correct


def test_mbpp_field_names_and_setup(ctx, data) -> None:
    item = {
        "id": 11,
        "text": "Write a function sq(x) using math.",
        "test_list": ["assert sq(3) == 9.0"],
        "test_setup_code": "import math",
    }
    task = PythonCodeTask(name="mbpp", data=data([item]), context=ctx)
    assert "Your code should pass these tests:\nassert sq(3) == 9.0" in task.prompt(
        task.items("validation")[0]
    )
    result = task.score_predictions({"11": "def sq(x):\n    return math.pow(x, 2)"}, split="validation")
    assert result.score == 1.0


def test_items_are_judged_in_parallel_and_in_order(ctx, data) -> None:
    items = [{"id": i, "prompt": "p", "tests": [f"assert f() == {i}"]} for i in range(6)]
    task = PythonCodeTask(name="code", data=data(items), context=ctx)
    preds = {str(i): f"def f():\n    return {i if i % 2 == 0 else -1}" for i in range(6)}
    result = task.score_predictions(preds, split="validation")
    assert [r.item_id for r in result.items] == [str(i) for i in range(6)]
    assert [r.correct for r in result.items] == [True, False] * 3


def test_items_need_tests(ctx, data) -> None:
    with pytest.raises(ConfigError, match="tests"):
        PythonCodeTask(name="code", data=data([{"id": 1, "prompt": "p", "tests": []}]), context=ctx)
