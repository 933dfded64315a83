from __future__ import annotations

import pytest

from cycleqd.errors import ConfigError
from cycleqd.evaluation.backends import ScriptedBackend
from cycleqd.evaluation.tasks import ShellTask

FILES = {"notes.txt": "b\na\nc\n", "logs/app.log": "ok\nERROR x\nok\nERROR y\n"}
ITEMS = [
    {
        "id": "count",
        "instruction": "How many lines contain ERROR in logs/app.log?",
        "files": FILES,
        "reference": "grep -c ERROR logs/app.log",
    },
    {
        "id": "sort",
        "instruction": "Sort notes.txt in place.",
        "files": FILES,
        "reference": "sort -o notes.txt notes.txt",
        "compare": "tree",
    },
    {"id": "hello", "instruction": "Print hello.", "expected_output": "hello\n"},
    {
        "id": "mkdir",
        "instruction": "Make a folder out holding copy.txt, a copy of notes.txt.",
        "files": FILES,
        "expected_tree": {**FILES, "out/copy.txt": FILES["notes.txt"]},
    },
]


@pytest.fixture(scope="module")
def task(ctx) -> ShellTask:
    data = {"validation": [{**i, "split": "validation"} for i in ITEMS], "test": []}
    t = ShellTask(name="os", data=data, context=ctx)
    t.prepare("validation")
    return t


def _judge(task: ShellTask, item_id: str, answer: str):
    result = task.score_predictions({item_id: answer}, split="validation")
    return next(i for i in result.items if i.item_id == item_id)


def test_output_match(task: ShellTask) -> None:
    assert _judge(task, "count", "```bash\ngrep ERROR logs/app.log | wc -l\n```").correct
    assert _judge(
        task, "count", "grep -c ok logs/app.log"
    ).correct  # judged by output: same count, same verdict
    r = _judge(task, "count", "grep -c INFO logs/app.log")
    assert r.reason == "output differs: expected '2', got '0' (exit status 1)"


def test_tree_match(task: ShellTask) -> None:
    assert _judge(task, "sort", "sort notes.txt > tmp && mv tmp notes.txt").correct
    r = _judge(task, "sort", "sort notes.txt > sorted.txt")
    assert r.reason == "folder differs: unexpected: sorted.txt; changed: notes.txt"


def test_expected_output_and_tree_given_in_the_item(task: ShellTask) -> None:
    assert _judge(task, "hello", "echo hello").correct
    assert not _judge(task, "hello", "echo hello; touch x").correct  # compare both: the folder changed
    assert _judge(task, "mkdir", "mkdir out && cp notes.txt out/copy.txt").correct
    assert (
        _judge(task, "mkdir", "mkdir out && cp logs/app.log out/copy.txt").reason
        == "folder differs: changed: out/copy.txt"
    )


def test_malformed_timeout_and_crash(task: ShellTask) -> None:
    assert _judge(task, "hello", "```bash\n```").reason == "malformed: the answer holds no command"
    # A short wall-clock limit, on an item that needs no reference run.
    hello = {"validation": [{**ITEMS[2], "split": "validation"}], "test": []}
    impatient = ShellTask(name="os", data=hello, context=task.context, timeout_s=1)
    r = _judge(impatient, "hello", "sleep 30; echo hello")
    assert "timed out" in r.reason
    r = _judge(task, "hello", "kill -SEGV $$")
    assert not r.correct
    assert "segmentation fault" in r.reason


def test_commands_run_in_a_fresh_copy_each_time(task: ShellTask) -> None:
    assert not _judge(task, "sort", "rm -f notes.txt logs/app.log").correct
    assert _judge(task, "count", "grep -c ERROR logs/app.log").correct


def test_evaluate_through_a_backend(task: ShellTask) -> None:
    answers = {
        "How many": "grep -c ERROR logs/app.log",
        "Sort": "sort notes.txt",
        "Print": "printf 'hello\\n'",
        "Make": "mkdir out; cp notes.txt out/copy.txt",
    }

    def respond(prompt: str) -> str:
        return next(cmd for key, cmd in answers.items() if key in prompt)

    result = task.evaluate(ScriptedBackend(respond), split="validation")
    assert [i.correct for i in result.items] == [True, False, True, True]
    assert "logs/app.log, notes.txt" in task.prompt(task.items("validation")[0])


def test_items_need_an_expectation_and_safe_names(ctx) -> None:
    with pytest.raises(ConfigError, match="give a reference command"):
        ShellTask(
            name="os",
            data={"validation": [{"id": "1", "split": "validation", "instruction": "x"}]},
            context=ctx,
        )
    bad = {"id": "1", "split": "validation", "instruction": "x", "expected_output": "", "files": {"../x": ""}}
    with pytest.raises(ConfigError, match="relative path"):
        ShellTask(name="os", data={"validation": [bad]}, context=ctx)
