"""``sql``: the model writes SQL for a question over a SQLite database built from the item.

Item fields: ``question``; the database as ``schema`` (SQL DDL) and/or ``tables`` (``{name: {columns,
types?, rows}}``); ``reference`` (the right SQL); optional ``compare`` (``auto``/``result``/``tables``)
and ``ordered``.

A query (SELECT/WITH/VALUES reference) is right when its rows equal the reference's rows, as a multiset
unless the reference has a top-level ``ORDER BY`` (``ordered`` overrides). Floats are compared rounded
(``float_digits``), ``1.0`` equals ``1``; column names are ignored, column order is not. A statement
that modifies (INSERT/UPDATE/DELETE...) is right when the resulting tables hold the same rows as after
the reference. Everything runs in the sandbox on a copy of the database.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from pydantic import Field

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import ItemResult
from cycleqd.evaluation.tasks.common import BuiltinTask, ExecParams, Item, extract_code, failed, passed
from cycleqd.evaluation.tasks.sqlenv import (
    DatabaseFields,
    SQLError,
    SQLReference,
    canon_rows,
    is_query,
    reference_orders,
    rows_difference,
    run_sql,
    same_rows,
    tables_difference,
)


class SQLParams(ExecParams):
    """Options of ``sql``.

    Attributes:
        max_rows: Most rows read from a result (a larger answer is wrong).
        float_digits: Decimal places compared of floats.
        show_rows: Rows of each table shown in the prompt's ``{schema}``.
    """

    max_rows: int = Field(10000, gt=0)
    float_digits: int = Field(6, ge=0)
    show_rows: int = Field(3, ge=0)


class SQLItem(Item, DatabaseFields):
    """A ``sql`` item."""

    question: str
    reference: str
    compare: Literal["auto", "result", "tables"] = "auto"
    ordered: bool | None = None

    @property
    def mode(self) -> Literal["result", "tables"]:
        """How answers are compared."""
        if self.compare != "auto":
            return self.compare
        return "result" if is_query(self.reference) else "tables"


class ReferenceCache:
    """Databases and reference answers of items, computed once (in the sandbox) and kept."""

    def __init__(self) -> None:
        self.dbs: dict[tuple[str, str], bytes] = {}
        self.refs: dict[tuple[str, str], SQLReference] = {}
        self.lock = threading.Lock()


def build_reference(
    task: BuiltinTask[Any, Any], item: Any, *, max_rows: int, digits: int
) -> tuple[bytes, SQLReference]:
    """Build an item's database and compute its reference answer in the sandbox.

    Args:
        task: The task (its sandbox and limits are used).
        item: An item with database fields, ``reference`` and ``mode``/``ordered``.
        max_rows: Row cap.
        digits: Float digits compared.

    Returns:
        The database bytes and the reference answer.

    Raises:
        ConfigError: When the database cannot be built or the reference fails.
    """
    sandbox, limits = task.context.sandbox, task.limits()
    where = f"task {task.name}: item {item.id!r} ({item.split})"
    try:
        answer, db = run_sql(sandbox, item.build_job(), limits=limits, keep_db=True)
        if not answer.get("ok") or db is None:
            raise ConfigError(f"{where}: cannot build its database: {answer.get('error')}; fix schema/tables")
        if item.mode == "result":
            answer, _ = run_sql(
                sandbox, {"mode": "query", "sql": item.reference, "max_rows": max_rows}, db=db, limits=limits
            )
        else:
            answer, _ = run_sql(
                sandbox, {"mode": "script", "sql": item.reference, "max_rows": max_rows}, db=db, limits=limits
            )
    except SQLError as exc:
        raise ConfigError(f"{where}: the reference cannot be run: {exc}") from None
    if not answer.get("ok"):
        raise ConfigError(
            f"{where}: the reference SQL fails: {answer.get('error')}; fix the item's reference"
        )
    if answer.get("truncated"):
        raise ConfigError(
            f"{where}: the reference returns more than max_rows={max_rows} rows; raise max_rows"
        )
    if item.mode == "result":
        ordered = item.ordered if item.ordered is not None else reference_orders(item.reference)
        return db, SQLReference(
            mode="result", rows=canon_rows(answer["rows"], digits=digits), ordered=ordered
        )
    return db, SQLReference(mode="tables", tables=answer["tables"])


class SQLTask(BuiltinTask[SQLParams, SQLItem]):
    """Text-to-SQL judged by executing the answer and the reference in the sandbox."""

    params_model = SQLParams
    item_model = SQLItem
    uses_sandbox = True
    default_template = (
        "Database (SQLite):\n{schema}\n\nQuestion: {question}\n"
        "Write one SQLite statement that answers the question, in a ```sql code block."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cache = ReferenceCache()

    def prompt_fields(self, item: SQLItem) -> dict[str, Any]:  # noqa: D102
        return {**item.model_dump(), "schema": item.schema_text(show_rows=self.params.show_rows)}

    def prepare(self, split: str) -> None:
        """Build every item's database and run its reference (in parallel, once).

        Args:
            split: The split.

        Raises:
            ConfigError: When an item's database or reference fails.
        """
        todo = [i for i in self.items(split) if (split, i.id) not in self._cache.refs]
        p = self.params

        def one(item: SQLItem) -> None:
            db, ref = build_reference(self, item, max_rows=p.max_rows, digits=p.float_digits)
            with self._cache.lock:
                self._cache.dbs[(split, item.id)] = db
                self._cache.refs[(split, item.id)] = ref

        self.map_items(one, todo)  # type: ignore[arg-type]

    def judge(self, item: SQLItem, output: str) -> ItemResult:  # noqa: D102
        sql = extract_code(output, languages=("sql", "sqlite"), mode=self.params.extract).strip()
        if not sql:
            return failed(item, output, "malformed: the answer holds no SQL")
        key = (item.split, item.id)
        db, ref = self._cache.dbs[key], self._cache.refs[key]
        p = self.params
        mode = "query" if ref.mode == "result" else "script"
        try:
            answer, _ = run_sql(
                self.context.sandbox,
                {"mode": mode, "sql": sql, "max_rows": p.max_rows},
                db=db,
                limits=self.limits(),
            )
        except SQLError as exc:
            return failed(item, output, str(exc), sql=sql)
        if not answer.get("ok"):
            return failed(item, output, f"SQL error: {answer.get('error')}", sql=sql)
        if answer.get("truncated"):
            return failed(item, output, f"the answer returns more than {p.max_rows} rows", sql=sql)
        if ref.mode == "result":
            assert ref.rows is not None
            got = canon_rows(answer["rows"], digits=p.float_digits)
            if same_rows(got, ref.rows, ordered=ref.ordered):
                return passed(item, output, sql=sql)
            return failed(item, output, rows_difference(got, ref.rows, ordered=ref.ordered), sql=sql)
        assert ref.tables is not None
        diff = tables_difference(answer["tables"], ref.tables, digits=p.float_digits)
        if diff is None:
            return passed(item, output, sql=sql)
        return failed(item, output, diff, sql=sql)
