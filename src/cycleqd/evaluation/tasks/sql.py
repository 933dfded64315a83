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
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

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
    run_sql_batch,
    same_rows,
    tables_difference,
)


class SQLParams(ExecParams):
    """Options of ``sql``.

    Attributes:
        max_rows: Most rows read from a result (a larger answer is wrong).
        float_digits: Decimal places compared of floats.
        show_rows: Rows of each table shown in the prompt's ``{schema}``.
        check_batch: Answers run in one sandboxed run, each on its own in-memory copy of its database
            (see :func:`~cycleqd.evaluation.tasks.sqlenv.run_sql_batch`); 1 runs each answer alone.
            Verdicts are the same either way.
    """

    max_rows: int = Field(10000, gt=0)
    float_digits: int = Field(6, ge=0)
    show_rows: int = Field(3, ge=0)
    check_batch: int = Field(32, ge=1)


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
    return db, reference_of(task, item, answer, max_rows=max_rows, digits=digits)


def reference_of(
    task: BuiltinTask[Any, Any], item: Any, answer: dict[str, Any], *, max_rows: int, digits: int
) -> SQLReference:
    """The reference answer of an item from what the runner returned for its reference SQL.

    Args:
        task: The task (for messages).
        item: The item.
        answer: The runner's answer to the reference.
        max_rows: Row cap.
        digits: Float digits compared.

    Returns:
        The reference.

    Raises:
        ConfigError: When the reference failed or returned too many rows.
    """
    where = f"task {task.name}: item {item.id!r} ({item.split})"
    if answer.get("stage") == "build":
        raise ConfigError(f"{where}: cannot build its database: {answer.get('error')}; fix schema/tables")
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
        return SQLReference(mode="result", rows=canon_rows(answer["rows"], digits=digits), ordered=ordered)
    return SQLReference(mode="tables", tables=answer["tables"])


class SQLTask(BuiltinTask[SQLParams, SQLItem]):
    """Text-to-SQL judged by executing the answer and the reference in the sandbox."""

    kind: ClassVar[str] = "sql"

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
        todo = []
        for item in self.items(split):
            if (split, item.id) in self._cache.refs:
                continue
            known = self.shared_reference("sql", item)  # an identical task of this process built it
            if known is not None:
                self._keep(item, *known)
            else:
                todo.append(item)
        p = self.params
        size = p.check_batch
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)] if size > 1 else []

        def batch(chunk: list[SQLItem]) -> list[SQLItem]:
            answers = run_sql_batch(
                self.context.sandbox,
                [(i.build_job(), "query" if i.mode == "result" else "script", i.reference) for i in chunk],
                max_rows=p.max_rows,
                limits=self.limits(),
            )
            left = []
            for item, answer in zip(chunk, answers, strict=True):
                if answer is None or not isinstance(answer.get("db"), bytes):
                    left.append(item)
                else:
                    ref = reference_of(self, item, answer, max_rows=p.max_rows, digits=p.float_digits)
                    self._keep(item, answer["db"], ref)
            return left

        alone = [i for left in self.map_items(batch, chunks) for i in left] if chunks else todo  # type: ignore[arg-type, union-attr]

        def one(item: SQLItem) -> None:
            self._keep(item, *build_reference(self, item, max_rows=p.max_rows, digits=p.float_digits))

        self.map_items(one, alone)  # type: ignore[arg-type]

    def _keep(self, item: SQLItem, db: bytes, ref: SQLReference) -> None:
        with self._cache.lock:
            self._cache.dbs[(item.split, item.id)] = db
            self._cache.refs[(item.split, item.id)] = ref
        self.share_reference("sql", item, (db, ref))
        # The reference defines the right result: an answer that is the reference text is right
        # without running it again.
        sql = self.extract(item.reference)
        self.remember_verdict(item, item.reference, passed(item, item.reference, sql=sql))

    def extract(self, output: str) -> str:
        """The SQL of an answer (fenced ``sql`` block, or the text), stripped."""
        return extract_code(output, languages=("sql", "sqlite"), mode=self.params.extract).strip()

    def answer_key(self, item: SQLItem, output: str) -> str | None:  # noqa: D102
        return self.extract(output)

    def judge(self, item: SQLItem, output: str) -> ItemResult:  # noqa: D102
        sql = self.extract(output)
        if not sql:
            return failed(item, output, "malformed: the answer holds no SQL")
        key = (item.split, item.id)
        db, ref = self._cache.dbs[key], self._cache.refs[key]
        mode = "query" if ref.mode == "result" else "script"
        try:
            answer, _ = run_sql(
                self.context.sandbox,
                {"mode": mode, "sql": sql, "max_rows": self.params.max_rows},
                db=db,
                limits=self.limits(),
            )
        except SQLError as exc:
            return failed(item, output, str(exc), sql=sql)
        return self.verdict(item, output, sql, answer)

    def judge_batch(self, pairs: Sequence[tuple[SQLItem, str]]) -> list[ItemResult]:
        """Judge answers, running up to ``check_batch`` of them per sandboxed run.

        Answers the batch could not settle (see :func:`run_sql_batch`) are run alone.

        Args:
            pairs: (item, output) pairs.

        Returns:
            One result per pair, in order.
        """
        size = self.params.check_batch
        if size < 2 or len(pairs) < 2:
            return super().judge_batch(pairs)
        results: list[ItemResult | None] = [None] * len(pairs)
        queued: list[tuple[int, str, tuple[bytes, str, str]]] = []
        for index, (item, output) in enumerate(pairs):
            sql = self.extract(output)
            if not sql:
                results[index] = failed(item, output, "malformed: the answer holds no SQL")
                continue
            key = (item.split, item.id)
            mode = "query" if self._cache.refs[key].mode == "result" else "script"
            queued.append((index, sql, (self._cache.dbs[key], mode, sql)))
        chunks = [queued[i : i + size] for i in range(0, len(queued), size)]

        def run_chunk(chunk: list[tuple[int, str, tuple[bytes, str, str]]]) -> list[dict[str, Any] | None]:
            return run_sql_batch(
                self.context.sandbox,
                [q for _, _, q in chunk],
                max_rows=self.params.max_rows,
                limits=self.limits(),
            )

        answers = self.map_items(run_chunk, chunks)  # type: ignore[arg-type]
        alone = []
        for chunk, chunk_answers in zip(chunks, answers, strict=True):
            for (index, sql, _), answer in zip(chunk, chunk_answers, strict=True):  # type: ignore[arg-type]
                item, output = pairs[index]
                if answer is None:
                    alone.append(index)
                else:
                    results[index] = self.verdict(item, output, sql, answer)
        for index, result in zip(alone, super().judge_batch([pairs[i] for i in alone]), strict=True):
            results[index] = result
        return [r for r in results if r is not None]

    def verdict(self, item: SQLItem, output: str, sql: str, answer: dict[str, Any]) -> ItemResult:
        """Judge the runner's answer to an item's SQL against the reference.

        Args:
            item: The item.
            output: The model's answer.
            sql: The SQL extracted from it.
            answer: What the runner returned for it.

        Returns:
            The item's result.
        """
        p = self.params
        ref = self._cache.refs[(item.split, item.id)]
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
