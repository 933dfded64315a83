from __future__ import annotations

from collections.abc import Callable

import pytest

from cycleqd.errors import ConfigError
from cycleqd.evaluation.backends import ScriptedBackend
from cycleqd.evaluation.base import Prompt
from cycleqd.evaluation.tasks import AgentTask
from cycleqd.evaluation.tasks.agent import parse_action

PEOPLE = {"people": {"columns": ["name", "age"], "rows": [["ann", 31], ["bob", 25], ["cy", 40]]}}
SQL_ITEMS = [
    {
        "id": "oldest",
        "question": "Who is the oldest?",
        "tables": PEOPLE,
        "reference": "SELECT name FROM people ORDER BY age DESC LIMIT 1",
    },
    {
        "id": "add",
        "question": "Add dan, aged 19.",
        "tables": PEOPLE,
        "reference": "INSERT INTO people VALUES ('dan', 19)",
    },
    {"id": "count", "question": "How many people?", "tables": PEOPLE, "answer": [3]},
]


def op(code: str, lang: str = "sql") -> str:
    return f"Action: Operation\n```{lang}\n{code}\n```"


def answer(text: str) -> str:
    return f"Action: Answer\nFinal Answer: {text}"


def scripted(turns: dict[str, list[str]]) -> Callable[[Prompt], str]:
    """A policy: for the episode whose first user message holds KEY, the turn matching its round."""

    def respond(prompt: Prompt) -> str:
        assert isinstance(prompt, list)
        task_text = prompt[1]["content"]
        round_ = sum(1 for m in prompt if m["role"] == "assistant")
        key = next(k for k in turns if k in task_text)
        return turns[key][round_] if round_ < len(turns[key]) else "I give up."

    return respond


@pytest.fixture
def sql_task(ctx, data) -> AgentTask:
    return AgentTask(name="db", data=data(SQL_ITEMS), context=ctx, env="sql", max_rounds=4)


def test_sql_episodes_run_to_their_final_answers(sql_task: AgentTask) -> None:
    backend = ScriptedBackend(
        scripted(
            {
                "oldest": [op("SELECT name, age FROM people"), answer("['cy']")],
                "Add dan": [
                    op("INSERT INTO people VALUES ('dan', 19)"),
                    op("SELECT * FROM people"),
                    answer("done"),
                ],
                "How many": [op("SELECT count(*) FROM people"), answer("2")],
            }
        )
    )
    result = sql_task.evaluate(backend, split="validation")
    oldest, add, count = result.items
    assert oldest.correct
    assert oldest.detail["rounds"] == 2
    assert oldest.detail["final_answer"] == "['cy']"
    assert add.correct
    assert add.detail["rounds"] == 3
    assert not count.correct
    assert count.reason == "final answer differs: expected [3], got [2]"
    # The environment answered each operation, and the model saw it in the next prompt.
    assert "[('ann', 31), ('bob', 25), ('cy', 40)]" in oldest.output
    assert "Query OK, 1 row(s) affected." in add.output
    # One batched generation per round, holding every episode still running.
    assert [len(c) for c in backend.calls] == [3, 3, 1]
    second_prompt = backend.calls[1][0]
    assert second_prompt[-1]["role"] == "user"
    assert "('cy', 40)" in second_prompt[-1]["content"]


def test_modifications_are_judged_on_the_database(sql_task: AgentTask) -> None:
    wrong = {"add": [op("INSERT INTO people VALUES ('dan', 91)"), answer("done")]}
    r = sql_task.score_predictions(wrong, split="validation").items[1]
    assert r.reason == "database differs: table people: 1 expected row(s) missing, 1 unexpected row(s)"


def test_no_final_answer_within_the_rounds(sql_task: AgentTask) -> None:
    turns = {"oldest": [op("SELECT 1")] * 10}
    r = sql_task.score_predictions(turns, split="validation").items[0]
    assert not r.correct
    assert r.reason == "no final answer within 4 rounds"
    assert r.detail["rounds"] == 4


def test_malformed_turns_get_a_hint_and_count_as_rounds(sql_task: AgentTask) -> None:
    turns = {"oldest": ["SELECT name FROM people", op("SELECT nme FROM people"), answer("cy")]}
    r = sql_task.score_predictions(turns, split="validation").items[0]
    assert r.correct
    assert r.detail["rounds"] == 3
    assert "Invalid action: no operation in a fenced code block" in r.output
    assert "Error: OperationalError: no such column: nme" in r.output


def test_missing_predictions_and_recorded_turns_that_stop_early(sql_task: AgentTask) -> None:
    result = sql_task.score_predictions({"oldest": [op("SELECT 1")]}, split="validation")
    assert result.items[0].reason == "the recorded turns end without a final answer"
    assert result.items[1].reason == "no prediction for this item"


def test_an_operation_that_hangs_is_cut_off(ctx, data) -> None:
    task = AgentTask(name="db", data=data(SQL_ITEMS[:1]), context=ctx, env="sql", max_rounds=3)
    forever = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    r = task.score_predictions({"oldest": [op(forever), answer("cy")]}, split="validation").items[0]
    assert r.correct
    assert "Error: " in r.output
    assert "timed out" in r.output or "CPU" in r.output


SHELL_ITEMS = [
    {
        "id": "files",
        "instruction": "How many .txt files are there?",
        "files": {"a.txt": "", "b.txt": "", "c.md": ""},
        "reference": "ls *.txt | wc -l",
    },
    {
        "id": "make",
        "instruction": "Create done.flag holding ok.",
        "files": {},
        "check": 'test "$(cat done.flag)" = ok && test "$1" = done',
    },
    {
        "id": "user",
        "instruction": "Which file is biggest?",
        "files": {"s": "1", "l": "1234567"},
        "expected_answer": "l",
        "expected_tree": {"s": "1", "l": "1234567"},
    },
]


def test_shell_episodes(ctx, data) -> None:
    task = AgentTask(name="os", data=data(SHELL_ITEMS), context=ctx, env="shell", max_rounds=3)
    backend = ScriptedBackend(
        scripted(
            {
                ".txt files": [op("ls", "bash"), answer("2")],
                "done.flag": [op("echo ok > done.flag", "bash"), answer("done")],
                "biggest": [op("ls -S | head -1; rm s", "bash"), answer("l")],
            }
        )
    )
    result = task.evaluate(backend, split="validation")
    files, make, user = result.items
    assert files.correct
    assert "a.txt\nb.txt\nc.md" in files.output
    assert make.correct
    assert not user.correct
    assert user.reason == "folder differs: missing: s"
    failing = task.score_predictions(
        {"make": [op("echo no > done.flag", "bash"), answer("done")]}, split="validation"
    )
    assert failing.items[1].reason.startswith("the check failed: exit status 1")


def test_parse_action() -> None:
    assert parse_action(answer("[1, 2]"), languages=("sql",)) == ("answer", "[1, 2]")
    assert parse_action(op("SELECT 1"), languages=("sql",)) == ("operation", "SELECT 1")
    assert parse_action("Action: Answer\n42", languages=("sql",))[0] == "invalid"
    assert parse_action("final answer: yes", languages=("sql",)) == ("answer", "yes")


def test_items_are_checked_for_the_environment(ctx, data) -> None:
    with pytest.raises(ConfigError, match="give a reference"):
        AgentTask(
            name="db", data=data([{"id": 1, "question": "q", "tables": PEOPLE}]), context=ctx, env="sql"
        )
    with pytest.raises(ConfigError, match="instruction"):
        AgentTask(name="os", data=data(SQL_ITEMS[:1]), context=ctx, env="shell")
    with pytest.raises(ConfigError, match="env"):
        AgentTask(name="x", data=data(SQL_ITEMS[:1]), context=ctx, env="browser")


def test_teacher_pairs_are_every_turn_with_the_conversation_before_it(sql_task: AgentTask) -> None:
    backend = ScriptedBackend(
        scripted(
            {
                "oldest": [op("SELECT name, age FROM people"), answer("['cy']")],
                "Add dan": [answer("done")],
            }
        )
    )
    assert sql_task.can_teach
    pairs = sql_task.teacher_pairs(backend, limit=2)
    turns = [turn for _, turn in pairs]
    assert turns == [op("SELECT name, age FROM people"), answer("done"), answer("['cy']")]
    first, _, last = (context for context, _ in pairs)
    assert [m["role"] for m in first] == ["system", "user"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"]
    assert last[2]["content"] == op("SELECT name, age FROM people")
    assert "cy" in last[3]["content"]  # the environment's answer to the operation
