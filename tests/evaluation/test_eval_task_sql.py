from __future__ import annotations

from pathlib import Path

import pytest

from cycleqd.errors import ConfigError
from cycleqd.evaluation.backends import ScriptedBackend
from cycleqd.evaluation.tasks import SQLTask
from cycleqd.evaluation.tasks.sqlenv import is_query, reference_orders

PEOPLE = {
    "people": {
        "columns": ["name", "age"],
        "types": ["TEXT", "INTEGER"],
        "rows": [["ann", 31], ["bob", 25], ["cy", 40]],
    }
}
ITEMS = [
    {"id": "names", "question": "All names?", "tables": PEOPLE, "reference": "SELECT name FROM people"},
    {
        "id": "oldest",
        "question": "Names by age, oldest first?",
        "tables": PEOPLE,
        "reference": "SELECT name FROM people ORDER BY age DESC",
    },
    {"id": "avg", "question": "Average age?", "tables": PEOPLE, "reference": "SELECT AVG(age) FROM people"},
    {
        "id": "add",
        "question": "Add dan, 19.",
        "schema": "CREATE TABLE people (name TEXT, age INTEGER);",
        "tables": PEOPLE,
        "reference": "INSERT INTO people VALUES ('dan', 19)",
    },
    {
        "id": "older",
        "question": "Everyone gets a year older.",
        "tables": PEOPLE,
        "reference": "UPDATE people SET age = age + 1",
    },
]


@pytest.fixture(scope="module")
def task(ctx) -> SQLTask:
    data = {"validation": [{**i, "split": "validation"} for i in ITEMS], "test": []}
    t = SQLTask(name="db", data=data, context=ctx)
    t.prepare("validation")
    return t


def _judge(task: SQLTask, item_id: str, answer: str):
    return task.score_predictions({item_id: answer}, split="validation").items[
        [i["id"] for i in ITEMS].index(item_id)
    ]


def test_query_results_compare_as_multisets(task: SQLTask) -> None:
    assert _judge(task, "names", "SELECT name AS who FROM people ORDER BY name DESC").correct
    r = _judge(task, "names", "SELECT name FROM people WHERE age > 30")
    assert (
        r.reason
        == "result differs: expected 3 rows [('ann',), ('bob',), ('cy',)], got 2 rows [('ann',), ('cy',)]"
    )


def test_order_matters_when_the_reference_orders(task: SQLTask) -> None:
    assert _judge(task, "oldest", "```sql\nSELECT name FROM people ORDER BY age DESC;\n```").correct
    r = _judge(task, "oldest", "SELECT name FROM people ORDER BY age")
    assert r.reason.startswith("right rows in the wrong order")


def test_floats_are_compared_rounded(task: SQLTask) -> None:
    assert _judge(task, "avg", "SELECT (31 + 25 + 40) / 3.0").correct
    assert _judge(task, "avg", "SELECT SUM(age) * 1.0 / COUNT(*) FROM people").correct
    assert not _judge(task, "avg", "SELECT 32.1").correct


def test_modifications_are_judged_by_the_tables(task: SQLTask) -> None:
    assert _judge(task, "add", "INSERT INTO people (age, name) VALUES (19, 'dan');").correct
    r = _judge(task, "add", "INSERT INTO people VALUES ('dan', 20)")
    assert r.reason == "database differs: table people: 1 expected row(s) missing, 1 unexpected row(s)"
    assert _judge(task, "older", "UPDATE people SET age = age + 1 WHERE 1").correct
    assert not _judge(task, "older", "SELECT * FROM people").correct


def test_errors_and_malformed_answers(task: SQLTask) -> None:
    assert (
        _judge(task, "names", "SELECT nme FROM people").reason
        == "SQL error: OperationalError: no such column: nme"
    )
    assert _judge(task, "names", "```sql\n```").reason == "malformed: the answer holds no SQL"
    r = _judge(task, "names", "SELECT name FROM people; DROP TABLE people")
    assert r.reason.startswith("SQL error: ProgrammingError")
    assert not _judge(task, "names", "DELETE FROM people").correct


def test_runaway_query_times_out(task: SQLTask) -> None:
    forever = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    r = _judge(task, "names", forever)
    assert not r.correct
    assert "timed out" in r.reason or "CPU" in r.reason


def test_sql_cannot_write_outside_its_folder(task: SQLTask, tmp_path: Path) -> None:
    target = tmp_path / "evil.sqlite"
    r = _judge(
        task,
        "add",
        f"ATTACH DATABASE '{target}' AS evil; CREATE TABLE evil.t (x); INSERT INTO people VALUES ('dan', 19)",
    )
    assert not r.correct
    assert not target.exists()


def test_evaluate_through_a_backend(task: SQLTask) -> None:
    answers = {
        "All names?": "SELECT name FROM people",
        "Names by age, oldest first?": "SELECT name FROM people",
        "Average age?": "SELECT AVG(age) FROM people",
        "Add dan, 19.": "INSERT INTO people VALUES ('dan', 19)",
        "Everyone gets a year older.": "UPDATE people SET age = age + 2",
    }

    def respond(prompt: str) -> str:
        return next(sql for q, sql in answers.items() if q in prompt)

    result = task.evaluate(ScriptedBackend(respond), split="validation")
    assert [i.correct for i in result.items] == [True, False, True, True, False]
    assert result.score == pytest.approx(0.6)


def test_prompt_shows_the_schema_and_rows(task: SQLTask) -> None:
    prompt = task.prompt(task.items("validation")[0])
    assert "CREATE TABLE people (name TEXT, age INTEGER);" in prompt
    assert "'ann', 31" in prompt
    assert "All names?" in prompt


def test_a_failing_reference_is_reported_before_scoring(ctx) -> None:
    bad = {
        "id": "x",
        "split": "validation",
        "question": "q",
        "tables": PEOPLE,
        "reference": "SELECT nope FROM people",
    }
    t = SQLTask(name="db", data={"validation": [bad], "test": []}, context=ctx)
    with pytest.raises(ConfigError, match="reference SQL fails: OperationalError: no such column: nope"):
        t.prepare("validation")


def test_items_need_a_database(ctx) -> None:
    item = {"id": "x", "split": "validation", "question": "q", "reference": "SELECT 1"}
    with pytest.raises(ConfigError, match="give the database"):
        SQLTask(name="db", data={"validation": [item], "test": []}, context=ctx)


@pytest.mark.parametrize(
    ("sql", "ordered"),
    [
        ("SELECT a FROM t ORDER BY a", True),
        ("SELECT a FROM (SELECT a FROM t ORDER BY a) LIMIT 2", False),
        ("SELECT 'order by' FROM t", False),
        ("select a from t -- order by a", False),
        ("SELECT a FROM t\norder  by a desc", True),
    ],
)
def test_reference_orders(sql: str, ordered: bool) -> None:
    assert reference_orders(sql) is ordered


def test_is_query() -> None:
    assert is_query("  -- c\n SELECT 1")
    assert is_query("WITH x AS (SELECT 1) SELECT * FROM x")
    assert not is_query("WITH x AS (SELECT 1) DELETE FROM t WHERE a IN x")
    assert not is_query("UPDATE t SET a = 1")
