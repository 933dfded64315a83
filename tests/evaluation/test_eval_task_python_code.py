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


CHEATS = {
    # An object equal to everything: not plain data, so the judge has nothing it could call equal.
    "always-equal": "class Anything:\n    def __eq__(self, other):\n        return True\n"
    "def f(x):\n    return Anything()",
    # A subclass of int equal to everything: read through int's own methods, it is 0.
    "equal-int": "class Zero(int):\n    def __eq__(self, other):\n        return True\n"
    "    __hash__ = int.__hash__\ndef f(x):\n    return Zero(0)",
    # The harness's reporting function, reached through the call stack: it reports values, not passes.
    "report-pass": "import os, sys\ndef f(x):\n    frame = sys._getframe()\n    while frame is not None:\n"
    "        if 'report' in frame.f_locals:\n"
    "            frame.f_locals['report']({'status': 'pass'})\n            os._exit(0)\n"
    "        frame = frame.f_back\n    return 0",
    # Every string in every frame searched for the expected value: the literals never enter the sandbox.
    "read-expected": "import gc, os, re, sys\ndef f(x):\n    found = []\n"
    "    for obj in gc.get_objects():\n        if isinstance(obj, dict):\n"
    "            for v in list(obj.values()):\n"
    "                if isinstance(v, str) and '== ' in v:\n"
    "                    found.append(v)\n"
    "    frame = sys._getframe()\n    while frame is not None:\n"
    "        for v in list(frame.f_locals.values()):\n"
    "            if isinstance(v, str) and '== ' in v:\n                found.append(v)\n"
    "        frame = frame.f_back\n"
    "    for text in found:\n"
    "        m = re.search(r'f\\\\(' + re.escape(repr(x)) + r'\\\\) == (.+)', text)\n"
    "        if m:\n            return eval(m.group(1))\n    return None",
    # Builtins patched for everything after the solution: the judge compares outside.
    "patched-builtins": "import builtins\nbuiltins.isinstance = lambda *a: True\n"
    "builtins.type = lambda *a: int\ndef f(x):\n    return object()",
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_score_cheats_fail_their_items(task: PythonCodeTask, name: str) -> None:
    r = _score(task, CHEATS[name])
    assert not r.correct, r.reason


def test_a_cheating_object_is_named_in_the_reason(task: PythonCodeTask) -> None:
    assert _score(task, CHEATS["always-equal"]).reason == (
        "test 0 failed: assert f(1) == 2 (got a Anything, which is not plain data the judge can compare: "
        "numbers, strings, bytes, None, lists, tuples, dicts, sets)"
    )
    assert _score(task, CHEATS["equal-int"]).reason == "test 0 failed: assert f(1) == 2 (got 0)"


def test_plain_values_of_every_kind_are_compared_as_python_compares_them(ctx, data) -> None:
    value = "{1: (2.5, 'x', b'y', None, True, {3}, frozenset({4}), 1+2j, 10**30, float('inf'), [])}"
    items = [
        {"id": "all", "prompt": "p", "tests": [f"assert f() == {value}", "assert not f() == {}"]},
        {"id": "tuple", "prompt": "p", "tests": ["assert g() == (1, 2)"]},  # a list is not a tuple
        {"id": "chain", "prompt": "p", "tests": ["assert 0 < h(2) <= 2 != 3", "assert 'b' in s()"]},
        {"id": "truth", "prompt": "p", "tests": ["assert h(0) is None or True", "assert not h(0)"]},
        # Not a single assert: run as it is in the sandbox.
        {
            "id": "block",
            "prompt": "p",
            "tests": ["y = h(2)\nassert y == 2", "for i in range(3):\n    assert h(i) == i"],
        },
    ]
    task = PythonCodeTask(name="code", data=data(items), context=ctx)
    program = (
        f"def f():\n    return {value}\n"
        "def g():\n    return [1, 2]\n"
        "def h(x):\n    return x\n"
        "def s():\n    return 'abc'\n"
    )
    result = task.score_predictions({i["id"]: program for i in items}, split="validation")
    by_id = {r.item_id: r for r in result.items}
    assert by_id["all"].correct, by_id["all"].reason
    assert by_id["tuple"].reason == "test 0 failed: assert g() == (1, 2) (got [1, 2])"
    assert by_id["chain"].correct, by_id["chain"].reason
    assert by_id["truth"].correct, by_id["truth"].reason
    assert by_id["block"].correct, by_id["block"].reason
    wrong = task.score_predictions({i["id"]: "def h(x):\n    return 1" for i in items}, split="validation")
    assert wrong.items[-1].reason == "test 0 failed: y = h(2)\nassert y == 2"


def test_a_value_the_judge_cannot_compare_fails_with_its_type_named(task: PythonCodeTask) -> None:
    r = _score(task, "from decimal import Decimal\ndef f(x):\n    return Decimal(x + 1)")
    assert not r.correct
    assert r.reason.startswith("test 0 failed: assert f(1) == 2 (got a Decimal, which is not plain data")


def test_an_answer_that_floods_its_output_is_told_so(task: PythonCodeTask) -> None:
    flood = "import sys\nsys.stdout.write('x' * (4 << 20))\ndef f(x):\n    return x + 1"
    r = _score(task, flood)
    assert not r.correct
    assert r.reason == (
        "the program wrote more than the output limit (evaluation.sandbox.max_output_kb), which cut off "
        "the results from test 0 on"
    )
