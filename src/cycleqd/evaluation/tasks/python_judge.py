"""How ``python_code`` answers are judged: values computed in the sandbox, verdicts outside it.

A test ``assert f(2) == [1, 2]`` is split in two. Inside the sandbox the harness runs the setup and the
solution, then evaluates each operand that is not a literal (``f(2)``) and writes its value as plain
data: numbers, strings, bytes, None, and lists, tuples, dicts, sets of them, read through the built-in
types' own methods so that an object cannot pass for what it is not (an ``__eq__`` that is always true
is not plain data, and the test fails). Outside, the judge decodes the values, evaluates the literal
operands itself (``[1, 2]`` never enters the sandbox, so an answer that inspects its interpreter cannot
copy the expected value) and applies the comparison. Nothing the answer can reach reports a pass: the
harness only reports values, which the answer could have returned anyway.

A test that is not a single ``assert`` statement (several statements, a loop) is run as it is inside
the sandbox, and its ``AssertionError`` or completion is taken as reported: such tests remain open to
an answer that tampers with the harness (docs/sandbox.md).
"""

from __future__ import annotations

import ast
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HARNESS = r'''
import json
import sys


class Unplain(Exception):
    pass


def plain(v, depth=0):
    """v as tagged JSON, read through the built-in types' own methods (no method of v runs)."""
    if depth > 100:
        raise Unplain("a value nested more than 100 deep")
    t = type(v)
    if v is None or t is bool:
        return v
    if isinstance(v, int):
        return {"i": str(int.__index__(v))}
    if isinstance(v, float):
        return {"f": float.hex(float.__float__(v))}
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, bytes):
        return {"b": bytes.hex(v)}
    if isinstance(v, complex):
        return {"c": [float.hex(complex.real.__get__(v)), float.hex(complex.imag.__get__(v))]}
    if isinstance(v, list):
        return {"l": [plain(x, depth + 1) for x in list.__iter__(v)]}
    if isinstance(v, tuple):
        return {"t": [plain(x, depth + 1) for x in tuple.__iter__(v)]}
    if isinstance(v, dict):
        return {"d": [[plain(k, depth + 1), plain(x, depth + 1)] for k, x in dict.items(v)]}
    if isinstance(v, frozenset):
        return {"F": [plain(x, depth + 1) for x in frozenset.__iter__(v)]}
    if isinstance(v, set):
        return {"S": [plain(x, depth + 1) for x in set.__iter__(v)]}
    raise Unplain(type.__getattribute__(t, "__qualname__")[:80])


def main():
    # The token and the tests come on stdin, so the solution cannot read them from a file.
    token = sys.stdin.readline().strip()
    spec = json.loads(sys.stdin.read())
    out = sys.stdout
    dumps = json.dumps

    def report(record):
        out.write("\n" + token + dumps(record) + "\n")
        out.flush()

    with open("solution.py", encoding="utf-8") as fh:
        source = fh.read()
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        code = compile(source, "solution.py", "exec")
    except SyntaxError as exc:
        report({"status": "syntax", "message": f"{exc.msg} (line {exc.lineno})"})
        return
    try:
        if spec["setup"]:
            exec(spec["setup"], env)
        exec(code, env)
    except BaseException as exc:
        report({"status": "load", "message": f"{type(exc).__name__}: {exc}"[:300]})
        return
    for index, test in enumerate(spec["tests"]):
        try:
            if "exec" in test:
                try:
                    exec(test["exec"], env)
                except AssertionError:
                    report({"i": index, "failed": True})
                    return
                report({"i": index, "ran": True})
            else:
                report({"i": index, "v": [plain(eval(e, env)) for e in test["eval"]]})
        except Unplain as exc:
            report({"i": index, "unplain": str(exc)})
            return
        except BaseException as exc:
            report({"i": index, "error": f"{type(exc).__name__}: {exc}"[:300]})
            return


main()
'''
"""The program that runs in the sandbox (as ``../support/harness.py``)."""

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


class MalformedRecordError(ValueError):
    """A value record that the harness would not write (forged by the answer, or cut short)."""


@dataclass(frozen=True)
class TestPlan:
    """How one test is judged.

    Attributes:
        source: The test as the item gives it.
        sandbox: What the harness is sent: ``{"eval": [expressions]}`` or ``{"exec": code}``.
        operands: For an ``eval`` test, one pair per operand: ``(True, value)`` for a literal the
            judge holds (never sent), ``(False, i)`` for the ``i``-th expression of ``sandbox["eval"]``.
        ops: The comparison operators between the operands (empty: the truth of the one operand).
        negate: Whether the assert is ``assert not ...``.
    """

    source: str
    sandbox: Mapping[str, Any]
    operands: tuple[tuple[bool, Any], ...] = ()
    ops: tuple[type[ast.cmpop], ...] = ()
    negate: bool = False

    @property
    def judged_outside(self) -> bool:
        """Whether the judge, not the sandbox, decides this test."""
        return "eval" in self.sandbox


def plan_test(source: str) -> TestPlan:
    """Split a test into what the sandbox computes and what the judge holds.

    Args:
        source: One test (``assert <expr>`` is judged outside; anything else runs as it is).

    Returns:
        The plan.
    """
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return TestPlan(source, {"exec": source})
    if len(body) != 1 or not isinstance(body[0], ast.Assert):
        return TestPlan(source, {"exec": source})
    expr, negate = body[0].test, False
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        expr, negate = expr.operand, True
    if isinstance(expr, ast.Compare):
        nodes, ops = [expr.left, *expr.comparators], tuple(type(op) for op in expr.ops)
    else:
        nodes, ops = [expr], ()
    sent: list[str] = []
    operands: list[tuple[bool, Any]] = []
    for node in nodes:
        try:
            operands.append((True, ast.literal_eval(node)))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            operands.append((False, len(sent)))
            sent.append(ast.unparse(node))
    return TestPlan(source, {"eval": sent}, tuple(operands), ops, negate)


def decode_value(data: Any, depth: int = 0) -> Any:
    """The plain value a harness record stands for.

    Args:
        data: One tagged JSON value, as the harness's ``plain`` writes it.
        depth: Nesting so far.

    Returns:
        The value, made of built-in types only.

    Raises:
        MalformedRecordError: When ``data`` is not something the harness writes.
    """
    if depth > 101:
        raise MalformedRecordError("nested too deeply")
    if data is None or isinstance(data, (bool, str)):
        return data
    if not isinstance(data, dict) or len(data) != 1:
        raise MalformedRecordError(f"not a tagged value: {str(data)[:60]}")
    ((tag, v),) = data.items()
    try:
        if tag == "i":
            return int(v)
        if tag == "f":
            return float.fromhex(v)
        if tag == "b":
            return bytes.fromhex(v)
        if tag == "c":
            return complex(float.fromhex(v[0]), float.fromhex(v[1]))
        items = [decode_value(x, depth + 1) for x in v] if tag in "ltFS" else None
        if tag == "l":
            return items
        if tag == "t":
            return tuple(items)
        if tag == "F":
            return frozenset(items)
        if tag == "S":
            return set(items)
        if tag == "d":
            return {decode_value(k, depth + 1): decode_value(x, depth + 1) for k, x in v}
    except MalformedRecordError:
        raise
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise MalformedRecordError(f"bad {tag!r} value: {exc}") from exc
    raise MalformedRecordError(f"unknown tag {tag!r}")


@dataclass(frozen=True)
class TestVerdict:
    """The judge's verdict on one test.

    Attributes:
        passed: Whether the test passed.
        reason: Why not (``None`` when it passed).
    """

    passed: bool
    reason: str | None = None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def judge_test(index: int, plan: TestPlan, record: Mapping[str, Any] | None) -> TestVerdict:
    """Judge one test from the harness's record of it.

    Args:
        index: The test's position (for the reason).
        plan: Its plan.
        record: What the harness wrote for it (``None``: nothing, the program ended before it).

    Returns:
        The verdict; reasons read ``test <i> failed: <test> (got <value>)``, ``test <i> crashed: <error>
        in <test>`` or say that the value is not plain data.
    """
    where = f"test {index}"
    if record is None:
        return TestVerdict(False, None)
    if "error" in record:
        return TestVerdict(False, f"{where} crashed: {str(record['error'])[:300]} in {plan.source}")
    if "unplain" in record:
        return TestVerdict(
            False,
            f"{where} failed: {plan.source} (got a {str(record['unplain'])[:80]}, which is not plain data "
            "the judge can compare: numbers, strings, bytes, None, lists, tuples, dicts, sets)",
        )
    if not plan.judged_outside:
        if record.get("ran") is True:
            return TestVerdict(True)
        return TestVerdict(False, f"{where} failed: {plan.source}")
    try:
        sent = record["v"]
        if not isinstance(sent, list) or len(sent) != len(plan.sandbox["eval"]):
            raise MalformedRecordError("wrong number of values")
        decoded = [decode_value(v) for v in sent]
        values = [value if literal else decoded[value] for literal, value in plan.operands]
        if plan.ops:
            pairs = zip(plan.ops, values[:-1], values[1:], strict=True)
            truth = all(bool(_COMPARE[op](a, b)) for op, a, b in pairs)
        else:
            truth = bool(values[0])
    except (MalformedRecordError, KeyError) as exc:
        return TestVerdict(
            False, f"{where}: the harness's record is malformed ({exc}); the answer tampered with it"
        )
    except RecursionError:
        return TestVerdict(False, f"{where} failed: {plan.source} (a value too deep to compare)")
    except Exception as exc:  # a comparison of plain values that Python refuses (``[1] < 1``)
        return TestVerdict(False, f"{where} crashed: {type(exc).__name__}: {exc} in {plan.source}"[:500])
    if truth != plan.negate:
        return TestVerdict(True)
    got = f" (got {_short(values[0])})" if plan.ops and not plan.operands[0][0] else ""
    return TestVerdict(False, f"{where} failed: {plan.source}{got}")


def harness_records(stdout: str, token: str) -> list[dict[str, Any]]:
    """The records the harness wrote (lines starting with the run's token), in order.

    Args:
        stdout: The run's standard output.
        token: The run's token.

    Returns:
        The records that parse as JSON objects.
    """
    out = []
    for line in stdout.splitlines():
        if line.startswith(token):
            try:
                record = json.loads(line[len(token) :])
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


def sandbox_spec(setup: str, plans: Sequence[TestPlan]) -> dict[str, Any]:
    """What the harness reads on stdin after the token: the setup and each test's sandbox part."""
    return {"setup": setup, "tests": [dict(p.sandbox) for p in plans]}
