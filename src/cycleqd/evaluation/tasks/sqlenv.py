"""SQLite databases for the ``sql`` and ``agent`` (SQL) kinds.

This module builds them from an item's schema and rows, runs SQL against them in the sandbox, and
compares results.

No SQL runs in the evaluating process, not even the dataset's: a small runner script (standard library
``sqlite3``) runs in the sandbox against a copy of the database and answers in JSON.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cycleqd.evaluation.sandbox import Sandbox, SandboxLimits, SandboxResult, SandboxSession

DB_NAME = "db.sqlite"

#: The program run in the sandbox (``sql_runner.py``, standard library only), as a support file.
RUNNER = (Path(__file__).resolve().parent / "sql_runner.py").read_text(encoding="utf-8")


class TableData(BaseModel):
    """One table of an item's database.

    Attributes:
        columns: Column names.
        types: Column types (``INTEGER``, ``TEXT``, ...); untyped when absent.
        rows: Rows, each a list with one value per column.
    """

    model_config = ConfigDict(extra="forbid")

    columns: list[str] = Field(min_length=1)
    types: list[str] | None = None
    rows: list[list[Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shapes(self) -> TableData:
        n = len(self.columns)
        if self.types is not None and len(self.types) != n:
            raise ValueError(f"types has {len(self.types)} entries for {n} columns")
        for i, row in enumerate(self.rows):
            if len(row) != n:
                raise ValueError(f"row {i} has {len(row)} values for {n} columns")
        return self


class DatabaseFields(BaseModel):
    """Item fields that describe a database: ``schema`` (SQL DDL) and/or ``tables``."""

    ddl: str | None = Field(None, validation_alias="schema")
    tables: dict[str, TableData] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _some_database(self) -> DatabaseFields:
        if not self.ddl and not self.tables:
            raise ValueError("give the database as schema (SQL DDL) and/or tables ({name: {columns, rows}})")
        return self

    def schema_text(self, *, show_rows: int = 0) -> str:
        """The database as shown in prompts: DDL (given or derived) and optionally the first rows."""
        parts = [self.ddl.strip()] if self.ddl else []
        for name, t in self.tables.items():
            if not self.ddl:
                types = t.types or [""] * len(t.columns)
                cols = ", ".join(f"{c} {ty}".strip() for c, ty in zip(t.columns, types, strict=True))
                parts.append(f"CREATE TABLE {name} ({cols});")
            if show_rows and t.rows:
                shown = "\n".join("  " + ", ".join(repr(v) for v in r) for r in t.rows[:show_rows])
                more = f"\n  ... ({len(t.rows)} rows in all)" if len(t.rows) > show_rows else ""
                parts.append(f"-- rows of {name} ({', '.join(t.columns)}):\n{shown}{more}")
        return "\n".join(parts)

    def build_job(self) -> dict[str, Any]:
        """The runner's ``build`` request."""
        return {
            "mode": "build",
            "schema": self.ddl,
            "tables": {k: v.model_dump() for k, v in self.tables.items()},
        }


class SQLError(Exception):
    """SQL failed in the sandbox (message: why)."""


def run_sql(
    target: Sandbox | SandboxSession,
    job: dict[str, Any],
    *,
    db: bytes | None = None,
    limits: SandboxLimits | None = None,
    keep_db: bool = False,
) -> tuple[dict[str, Any], bytes | None]:
    """Run one runner request in the sandbox.

    Args:
        target: A sandbox (fresh folder holding a copy of ``db``) or a session (its folder's database).
        job: The request (``mode`` and its fields).
        db: Database bytes to copy into a fresh folder (with a sandbox target).
        limits: Limits of the run.
        keep_db: Return the database's bytes after the run.

    Returns:
        The runner's answer and, with ``keep_db``, the database afterwards.

    Raises:
        SQLError: When the runner did not answer (timeout, crash, output too large).
    """
    if isinstance(target, Sandbox):
        files = {DB_NAME: db} if db is not None else {}
        with target.session(files=files, support_files={"sql_runner.py": RUNNER}) as s:
            return run_sql(s, job, limits=limits, keep_db=keep_db)
    session = target
    if not (session.support / "sql_runner.py").exists():
        (session.support / "sql_runner.py").write_text(RUNNER)
    limits = limits or session._sandbox.limits
    result = session.run(
        [session._sandbox.python, "-I", "-S", "../support/sql_runner.py"],
        stdin=json.dumps(job),
        limits=limits,
    )
    answer = _parse_answer(result)
    data = session.read_file(DB_NAME, max_bytes=limits.max_file_mb * 1024 * 1024) if keep_db else None
    return answer, data


def run_sql_batch(
    sandbox: Sandbox,
    queries: Sequence[tuple[bytes | dict[str, Any], str, str]],
    *,
    max_rows: int,
    limits: SandboxLimits | None = None,
    per_query_s: float = 1.0,
) -> list[dict[str, Any] | None]:
    """Run several queries in one sandboxed run, each on its own in-memory copy of its database.

    This is what makes checking many answers cheap: one sandbox start instead of one per answer. A
    query gets the same answer as :func:`run_sql` would give it, or ``None`` when it must be run
    alone to be sure of that (it was refused a file, ran longer than ``per_query_s`` or out of memory,
    or the batch itself failed).

    Args:
        sandbox: The sandbox.
        queries: (database, mode ``query`` or ``script``, SQL) triples; a database is its bytes, or
            the ``build`` request of :meth:`DatabaseFields.build_job` to build it first (the answer then
            carries the built database's bytes under ``db``; a failed build has ``stage: build``).
        max_rows: Row cap of each result.
        limits: Limits of one query run alone; the batch gets their wall time plus ``per_query_s`` per
            query.
        per_query_s: Time after which a query is interrupted and left for a run of its own.

    Returns:
        One runner answer (or ``None``) per query, in order.
    """
    if not queries:
        return []
    limits = limits or sandbox.limits
    dbs: dict[bytes, int] = {}
    items = []
    for db, mode, sql in queries:
        if isinstance(db, dict):
            items.append({"build": db, "mode": mode, "sql": sql})
        else:
            items.append({"db": dbs.setdefault(db, len(dbs)), "mode": mode, "sql": sql})
    job = {
        "mode": "batch",
        "max_rows": max_rows,
        "per_query_s": per_query_s,
        "dbs": [base64.b64encode(d).decode() for d in dbs],
        "items": items,
    }
    wall = limits.wall_s + per_query_s * len(queries)
    try:
        answer, _ = run_sql(sandbox, job, limits=limits.replace(wall_s=wall, cpu_s=max(limits.cpu_s, wall)))
    except SQLError:
        return [None] * len(queries)
    answers = answer.get("answers") if answer.get("ok") else None
    if not isinstance(answers, list) or len(answers) != len(queries):
        return [None] * len(queries)
    out: list[dict[str, Any] | None] = []
    for a in answers:
        if not isinstance(a, dict) or a.get("retry"):
            out.append(None)
            continue
        if isinstance(a.get("db"), str):
            a["db"] = base64.b64decode(a["db"])
        out.append(a)
    return out


def _parse_answer(result: SandboxResult) -> dict[str, Any]:
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    if lines and not result.stopped and not result.output_truncated:
        try:
            answer = json.loads(lines[-1])
            if isinstance(answer, dict) and "ok" in answer:
                return answer
        except json.JSONDecodeError:
            pass
    if result.output_truncated:
        raise SQLError("the result is larger than the sandbox's output limit")
    raise SQLError(result.failure() or "the SQL runner gave no answer")


# -- comparing results ------------------------------------------------------------------------------
_STRINGS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_PARENS = re.compile(r"\([^()]*\)")


def _strip_sql(sql: str) -> str:
    s = _COMMENTS.sub(" ", sql)
    s = _STRINGS.sub("''", s)
    prev = None
    while prev != s:
        prev, s = s, _PARENS.sub(" ", s)
    return s


def reference_orders(sql: str) -> bool:
    """Whether a query orders its result at the top level (``ORDER BY`` outside sub-queries)."""
    return re.search(r"\border\s+by\b", _strip_sql(sql), re.IGNORECASE) is not None


def is_query(sql: str) -> bool:
    """Whether SQL reads rather than modifies (starts with SELECT, WITH ... SELECT or VALUES)."""
    s = _COMMENTS.sub(" ", sql).strip().lstrip("(").lower()
    if s.startswith(("select", "values")):
        return True
    if s.startswith("with"):
        return not re.search(r"\b(insert|update|delete|replace)\b", _strip_sql(sql), re.IGNORECASE)
    return False


def canon(value: Any, *, digits: int = 6) -> Any:
    """A value in a form where equal results compare equal (``1.0`` → ``1``, floats rounded)."""
    if isinstance(value, dict) and "$bytes" in value:
        return ("bytes", value["$bytes"])
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == math.floor(value) and abs(value) < 2**53:
            return int(value)
        return round(value, digits) if math.isfinite(value) else value
    if isinstance(value, (list, tuple)):
        return tuple(canon(v, digits=digits) for v in value)
    return value


def canon_rows(rows: Iterable[Sequence[Any]], *, digits: int = 6) -> list[tuple[Any, ...]]:
    """Rows as tuples of canonical values."""
    return [tuple(canon(v, digits=digits) for v in row) for row in rows]


def same_rows(got: Sequence[tuple[Any, ...]], expected: Sequence[tuple[Any, ...]], *, ordered: bool) -> bool:
    """Equal as lists (``ordered``) or as multisets."""
    if ordered:
        return list(got) == list(expected)
    return Counter(got) == Counter(expected)


def _show(rows: Sequence[tuple[Any, ...]], n: int = 3) -> str:
    shown = ", ".join(repr(r) for r in rows[:n])
    return f"{len(rows)} row{'s' if len(rows) != 1 else ''}" + (
        f" [{shown}{', ...' if len(rows) > n else ''}]" if rows else ""
    )


def rows_difference(
    got: Sequence[tuple[Any, ...]], expected: Sequence[tuple[Any, ...]], *, ordered: bool
) -> str:
    """Why two results differ, in one line."""
    if ordered and Counter(got) == Counter(expected):
        return f"right rows in the wrong order: expected {_show(expected)}, got {_show(got)}"
    return f"result differs: expected {_show(expected)}, got {_show(got)}"


def canon_tables(tables: dict[str, Any], *, digits: int = 6) -> dict[str, Counter[tuple[Any, ...]]]:
    """Table contents as multisets of canonical rows (row order in a table carries no meaning)."""
    return {name: Counter(canon_rows(t["rows"], digits=digits)) for name, t in tables.items()}


def tables_difference(got: dict[str, Any], expected: dict[str, Any], *, digits: int = 6) -> str | None:
    """Why two databases' contents differ (``None`` when equal)."""
    g, e = canon_tables(got, digits=digits), canon_tables(expected, digits=digits)
    if g == e:
        return None
    problems = []
    for name in sorted(set(e) - set(g)):
        problems.append(f"table {name} is missing")
    for name in sorted(set(g) - set(e)):
        problems.append(f"unexpected table {name}")
    for name in sorted(set(g) & set(e)):
        if g[name] != e[name]:
            missing = sum((e[name] - g[name]).values())
            extra = sum((g[name] - e[name]).values())
            problems.append(f"table {name}: {missing} expected row(s) missing, {extra} unexpected row(s)")
    return "database differs: " + "; ".join(problems)


@dataclass(frozen=True)
class SQLReference:
    """The reference answer of an item.

    Attributes:
        mode: ``result`` (compare query results) or ``tables`` (compare database contents).
        rows: Canonical rows of the reference query (``result``).
        ordered: Whether row order matters (``result``).
        tables: Database contents after the reference statement(s) (``tables``).
    """

    mode: Literal["result", "tables"]
    rows: list[tuple[Any, ...]] | None = None
    ordered: bool = False
    tables: dict[str, Any] | None = None


def parse_answer_values(text: str, *, digits: int = 6) -> list[Any]:
    """The values of a final answer such as ``[('Alice', 3)]``, flattened and canonical.

    Numbers written as strings count as numbers. Text that is not a Python literal is one value.

    Args:
        text: The answer.
        digits: Decimal places kept of floats.

    Returns:
        The flat list of values.
    """
    text = text.strip()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = text.strip("'\"")
    out: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, (list, tuple, set)):
            for x in v:
                walk(x)
        else:
            out.append(canon(_numeric(v), digits=digits))

    walk(value)
    return out


def _numeric(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                f = float(v)
                return f if math.isfinite(f) else v
            except ValueError:
                return v.strip()
    return v


def flatten_rows(rows: Sequence[tuple[Any, ...]], *, digits: int = 6) -> list[Any]:
    """All values of the rows in order, canonical, numbers in strings counted as numbers."""
    return [canon(_numeric(v), digits=digits) for row in rows for v in row]
