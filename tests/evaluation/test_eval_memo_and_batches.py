"""Verdict memo, reference answers, batched SQL checks, answer prefixes and the syntax pre-check.

These make scoring many similar models cheap; each test checks that they change no verdict and that
they really avoid sandboxed runs.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cycleqd.errors import ConfigError
from cycleqd.evaluation.sandbox import Sandbox, SandboxLimits
from cycleqd.evaluation.tasks import PythonCodeTask, ShellTask, SQLTask
from cycleqd.evaluation.tasks.common import TaskContext
from cycleqd.evaluation.tasks.memo import Memo
from cycleqd.evaluation.tasks.python_code import syntax_error
from cycleqd.evaluation.tasks.sqlenv import run_sql_batch


class CountingSandbox(Sandbox):
    """A sandbox that counts the sandboxed runs it starts (a batch of programs is one run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs = 0
        self.probe()  # once, before counting (batches ask what isolation the machine has)
        self.runs = 0

    def _launch(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.runs += 1
        return super()._launch(*args, **kwargs)


@pytest.fixture
def counting() -> CountingSandbox:
    return CountingSandbox(SandboxLimits(wall_s=10, cpu_s=2, memory_mb=512, max_processes=32, max_file_mb=4))


def _ctx(sandbox: Sandbox) -> TaskContext:
    return TaskContext(sandbox=sandbox, max_new_tokens=64, workers=2)


def _data(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {"validation": [{**i, "split": "validation"} for i in items], "test": []}


def test_memo_is_bounded_and_counts() -> None:
    memo: Memo[int] = Memo(max_entries=2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the most recent
    memo.put("c", 3)
    assert memo.get("b") is None
    assert (memo.get("a"), memo.get("c")) == (1, 3)
    assert (memo.hits, memo.misses, len(memo)) == (3, 1, 2)
    with pytest.raises(ValueError, match="positive"):
        Memo(max_entries=0)


CODE = [
    {"id": "inc", "prompt": "add 1", "tests": ["assert f(1) == 2", "assert f(-1) == 0"], "reference": "x+1"},
    {"id": "dbl", "prompt": "double", "tests": ["assert f(2) == 4", "assert f(0) == 0"], "reference": "x*2"},
]


BARE = [{k: v for k, v in i.items() if k != "reference"} for i in CODE]


def test_answer_prefix_completes_the_program_and_references_are_remembered(counting) -> None:
    task = PythonCodeTask(
        name="code",
        data=_data(CODE),
        context=_ctx(counting),
        answer_prefix="def f(x): return ",
        check_batch=1,  # one sandbox per answer, so that runs count answers
    )
    task.prepare("validation")
    assert counting.runs == 2  # each reference checked once in the sandbox
    task.prepare("validation")
    assert counting.runs == 2
    result = task.score_predictions({"inc": "x+1", "dbl": "x+x"}, split="validation")
    assert [i.correct for i in result.items] == [True, True]
    assert result.items[0].detail["code"] == "def f(x): return x+1"
    assert counting.runs == 3  # the reference text was known; x+x was run
    again = task.score_predictions({"inc": "x+1", "dbl": "x+x"}, split="validation")
    assert counting.runs == 3  # both verdicts remembered
    assert [i.correct for i in again.items] == [True, True]
    wrong = task.score_predictions({"inc": "x+2", "dbl": "x*3"}, split="validation")
    assert [i.correct for i in wrong.items] == [False, False]
    assert wrong.items[0].reason == "test 0 failed: assert f(1) == 2 (got 3)"


def test_memo_can_be_switched_off(counting) -> None:
    task = PythonCodeTask(
        name="code",
        data=_data(CODE[:1]),
        context=_ctx(counting),
        answer_prefix="def f(x): return ",
        memoize=False,
    )
    for _ in range(2):
        assert task.score_predictions({"inc": "1+x"}, split="validation").score == 1.0
    assert counting.runs == 3  # the reference while preparing, then the answer each time


def test_a_reference_that_fails_its_tests_is_a_data_error(counting) -> None:
    bad = [{**CODE[0], "reference": "x+2"}]
    task = PythonCodeTask(
        name="code", data=_data(bad), context=_ctx(counting), answer_prefix="def f(x): return "
    )
    with pytest.raises(ConfigError, match="the reference fails its own tests: test 0 failed"):
        task.prepare("validation")


def test_syntax_errors_are_found_without_a_sandbox(counting) -> None:
    task = PythonCodeTask(
        name="code", data=_data(BARE[:1]), context=_ctx(counting), answer_prefix="def f(x): return "
    )
    r = task.score_predictions({"inc": "x+,1]"}, split="validation").items[0]
    assert r.reason is not None
    assert r.reason.startswith("syntax error: ")
    assert r.reason.endswith("(line 1)")
    assert counting.runs == 0
    assert syntax_error("def f(x): return x") is None
    assert syntax_error("def f(x) return x") is not None
    assert syntax_error("x = '\x00'") is None  # left to the sandbox


def test_the_same_syntax_error_message_as_the_sandboxed_harness(counting) -> None:
    # Ask the harness itself through a program that parses but fails to compile in the same way: the
    # reason format must not depend on where the error was found.
    task = PythonCodeTask(name="code", data=_data(BARE[:1]), context=_ctx(counting))
    inside = task.score_predictions({"inc": "return 1"}, split="validation").items[0]  # compile-time error
    outside = task.score_predictions({"inc": "def f(x) return x"}, split="validation").items[0]
    assert counting.runs == 1
    assert inside.reason is not None
    assert outside.reason is not None
    assert inside.reason.startswith("syntax error: ")
    assert inside.reason.endswith("(line 1)")
    assert outside.reason.startswith("syntax error: ")
    assert outside.reason.endswith("(line 1)")


PEOPLE = {
    "t": {"columns": ["n", "a"], "types": ["text", "integer"], "rows": [["ann", 31], ["bob", 25], ["cy", 40]]}
}
SQL_ITEMS = [
    {
        "id": f"q{k}",
        "question": f"names over {k}",
        "tables": PEOPLE,
        "reference": f"select n from t where a>{k}",
    }
    for k in (20, 30, 35)
] + [{"id": "up", "question": "age all", "tables": PEOPLE, "reference": "update t set a=a+1"}]

ANSWERS = {
    "q20": "select n from t",  # right by result
    "q30": "select n from t where a>=25",  # wrong rows
    "q35": "select nope from t",  # SQL error
    "up": "update t set a=a+2",  # wrong table contents
}


def _sql(sandbox: Sandbox, **params: Any) -> SQLTask:
    task = SQLTask(name="db", data=_data(SQL_ITEMS), context=_ctx(sandbox), **params)
    task.prepare("validation")
    return task


def test_batched_sql_checks_give_the_verdicts_of_single_runs(counting) -> None:
    single = _sql(counting, check_batch=1, memoize=False)
    before = counting.runs
    alone = single.score_predictions(ANSWERS, split="validation")
    assert counting.runs - before == len(ANSWERS)
    batched = _sql(counting, memoize=False)
    before = counting.runs
    together = batched.score_predictions(ANSWERS, split="validation")
    assert counting.runs - before == 1
    assert [(i.correct, i.reason) for i in together.items] == [(i.correct, i.reason) for i in alone.items]
    assert [i.correct for i in together.items] == [True, False, False, False]
    assert together.items[2].reason == "SQL error: OperationalError: no such column: nope"


def test_batches_build_the_databases_while_preparing(counting) -> None:
    task = _sql(counting)
    assert counting.runs == 1  # four databases and references in one run
    right = task.score_predictions({i["id"]: i["reference"] for i in SQL_ITEMS}, split="validation")
    assert right.score == 1.0
    assert counting.runs == 1  # references are right without running them again


def test_queries_that_reach_files_or_run_long_are_rerun_alone(counting, tmp_path) -> None:
    task = _sql(counting, memoize=False)
    target = tmp_path / "x.db"
    hostile = {
        "q20": f"attach '{target}' as x",
        "q30": "with recursive c(i) as (select 1 union all select i+1 from c) select count(*) from c",
        "q35": "select n from t where a>35",
    }
    answers = run_sql_batch(
        counting,
        [(task._cache.dbs[("validation", k)], "query", v) for k, v in hostile.items()],
        max_rows=100,
        limits=SandboxLimits(wall_s=5, cpu_s=2),
        per_query_s=0.2,
    )
    assert answers[0] is None  # refused a file: left for a run of its own
    assert answers[1] is None  # interrupted: left for a run of its own
    assert answers[2] is not None
    assert answers[2]["rows"] == [["cy"]]
    assert not target.exists()


def test_shell_references_are_run_once_and_shared_by_identical_tasks(counting) -> None:
    items = [
        {"id": "list", "instruction": "sort", "files": {"a.txt": "b\na\n"}, "reference": "sort a.txt"},
        {"id": "new", "instruction": "mkdir d", "files": {}, "reference": "mkdir d"},
    ]
    signature = f"test-{uuid.uuid4().hex}"  # identical tasks have equal signatures (set by build_tasks)
    first, twin = (
        ShellTask(name="os", data=_data(items), context=_ctx(counting), check_batch=1) for _ in range(2)
    )
    first.signature = twin.signature = signature
    first.prepare("validation")
    assert counting.runs == 2
    twin.prepare("validation")
    assert counting.runs == 2  # what the references did is shared
    result = twin.score_predictions({"list": "sort a.txt", "new": "mkdir e"}, split="validation")
    assert [i.correct for i in result.items] == [True, False]
    assert counting.runs == 3  # only "mkdir e" ran
    other = ShellTask(name="os", data=_data(items), context=_ctx(counting), check_batch=1)  # its own
    other.prepare("validation")
    assert counting.runs == 5
