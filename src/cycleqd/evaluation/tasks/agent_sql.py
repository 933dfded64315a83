"""The SQL environment of ``agent``: a SQLite database the model queries and changes, one per episode.

Items: ``question``, the database (``schema`` and/or ``tables``), and ``reference`` (SQL) and/or
``answer`` (the expected values). A query reference (or ``answer``) is judged on the final answer's
values (a Python literal, flattened; as a multiset unless the reference orders its rows); a modifying
reference is judged on the database contents when the model answers.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from cycleqd.errors import ConfigError
from cycleqd.evaluation.sandbox import SandboxSession
from cycleqd.evaluation.tasks.agent_env import AgentEnvironment, AgentHost, Episode
from cycleqd.evaluation.tasks.common import Item, brief
from cycleqd.evaluation.tasks.sql import ReferenceCache, build_reference
from cycleqd.evaluation.tasks.sqlenv import (
    RUNNER,
    DatabaseFields,
    SQLError,
    flatten_rows,
    is_query,
    parse_answer_values,
    run_sql,
    tables_difference,
)

SQL_SYSTEM = """You are an agent that answers questions about a SQLite database by running SQL.
Each turn, do exactly one of the following.
1. Run one SQL statement and see its result:
Action: Operation
```sql
SELECT * FROM table_name;
```
2. Give your final answer (the values asked for, as a list):
Action: Answer
Final Answer: ["value", 3]
When the question asks you to change the database, make the changes with operations, then answer
"Final Answer: done". You have at most {max_rounds} turns."""


class AgentSQLItem(Item, DatabaseFields):
    """An ``agent`` item of the SQL environment."""

    question: str
    reference: str | None = None
    answer: list[Any] | str | int | float | None = None
    compare: Literal["auto", "result", "tables"] = "auto"
    ordered: bool | None = None

    @model_validator(mode="after")
    def _has_expectation(self) -> AgentSQLItem:
        if self.reference is None and self.answer is None:
            raise ValueError("give a reference (SQL) and/or the expected answer")
        if self.reference is None and self.compare == "tables":
            raise ValueError("compare: tables needs a reference statement")
        return self

    @property
    def mode(self) -> Literal["result", "tables"]:
        """How the episode is judged."""
        if self.compare != "auto":
            return self.compare
        if self.reference is None:
            return "result"
        return "result" if is_query(self.reference) else "tables"


class SQLEnvironment(AgentEnvironment):
    """A SQLite database per episode, built from the item; operations are SQL statements."""

    item_model: ClassVar[type[Item]] = AgentSQLItem
    languages: ClassVar[tuple[str, ...]] = ("sql", "sqlite")
    system: ClassVar[str] = SQL_SYSTEM
    template: ClassVar[str] = "Database (SQLite):\n{schema}\n\nQuestion: {question}"

    def __init__(self, task: AgentHost) -> None:
        super().__init__(task)
        self._cache = ReferenceCache()
        self._lock = threading.Lock()

    def prompt_fields(self, item: Any, fields: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        return {**fields, "schema": item.schema_text(show_rows=self.task.params.show_rows)}

    def prepare(self, split: str, items: Sequence[Any]) -> None:  # noqa: D102
        todo = [i for i in items if (split, i.id) not in self._cache.dbs]
        self.task.map_items(lambda item: self._prepare(split, item), todo)

    def open(self, stack: contextlib.ExitStack, item: Any) -> SandboxSession:  # noqa: D102
        db = self._cache.dbs[(item.split, item.id)]
        sandbox = self.task.context.sandbox
        return stack.enter_context(
            sandbox.session(files={"db.sqlite": db}, support_files={"sql_runner.py": RUNNER})
        )

    def operate(self, episode: Episode, code: str) -> str:  # noqa: D102
        return self._run_sql(episode, code)

    def judge(self, episode: Episode) -> str | None:  # noqa: D102
        return self._judge_sql(episode)

    def _prepare(self, split: str, item: AgentSQLItem) -> None:
        task = self.task
        p = task.params
        if item.reference is not None:
            db, ref = build_reference(task, item, max_rows=p.max_rows, digits=p.float_digits)
        else:
            try:
                answer, data = run_sql(
                    task.context.sandbox, item.build_job(), limits=task.limits(), keep_db=True
                )
            except SQLError as exc:
                raise ConfigError(
                    f"task {task.name}: item {item.id!r}: cannot build its database: {exc}"
                ) from None
            if not answer.get("ok") or data is None:
                raise ConfigError(
                    f"task {task.name}: item {item.id!r}: cannot build its database: {answer.get('error')}"
                )
            db, ref = data, None
        with self._lock:
            self._cache.dbs[(split, item.id)] = db
            if ref is not None:
                self._cache.refs[(split, item.id)] = ref

    def _run_sql(self, episode: Episode, sql: str) -> str:
        try:
            answer, _ = run_sql(
                episode.session,
                {"mode": "statement", "sql": sql, "max_rows": self.task.params.max_rows},
                limits=self.task.limits(),
            )
        except SQLError as exc:
            return f"Error: {exc}"
        if not answer.get("ok"):
            return f"Error: {answer.get('error')}"
        if "rows" in answer:
            rows = [tuple(r) for r in answer["rows"]]
            return repr(rows) if rows else "[] (no rows)"
        return f"Query OK, {answer.get('rowcount', 0)} row(s) affected."

    def _judge_sql(self, episode: Episode) -> str | None:
        item: AgentSQLItem = episode.item
        p = self.task.params
        ref = self._cache.refs.get((item.split, item.id))
        if item.mode == "tables":
            assert ref is not None
            assert ref.tables is not None
            try:
                answer, _ = run_sql(
                    episode.session, {"mode": "dump", "max_rows": p.max_rows}, limits=self.task.limits()
                )
            except SQLError as exc:
                return f"cannot read the database after the episode: {exc}"
            if not answer.get("ok"):
                return f"cannot read the database after the episode: {answer.get('error')}"
            return tables_difference(answer["tables"], ref.tables, digits=p.float_digits)
        assert episode.answer is not None
        got = parse_answer_values(episode.answer, digits=p.float_digits)
        if item.answer is not None:
            expected = parse_answer_values(repr(item.answer), digits=p.float_digits)
            ordered = bool(item.ordered)
        else:
            assert ref is not None
            assert ref.rows is not None
            expected = flatten_rows(ref.rows, digits=p.float_digits)
            ordered = ref.ordered
        same = got == expected if ordered else Counter(map(repr, got)) == Counter(map(repr, expected))
        if same:
            return None
        return f"final answer differs: expected {brief(repr(expected))}, got {brief(repr(got))}"
