"""``python_code``: the model writes a function that must pass the item's assert-style tests.

This is MBPP-style pass@1 with greedy decoding.

Item fields: ``prompt`` (the problem), ``tests`` (assert statements; ``test_list`` also accepted),
``setup`` (code run before the solution, such as imports; ``test_setup_code`` also accepted), optional
``reference`` (a right answer, written as the model should write it: it is checked once while preparing,
and must pass).

With the ``answer_prefix`` param the model writes only the end of the program: for instance with
``answer_prefix: "def f(x): return "`` an answer ``x+1`` is run as ``def f(x): return x+1``.

The answer's code (the first fenced Python block, else the whole answer) runs in the sandbox with a
small harness that executes the setup, the solution and each test in turn and reports the first
failure. The verdict line carries a random token given on stdin, so that printing alone does not fake
a pass (code in the same process could still find the token by introspection: the sandbox, not the
harness, is what contains hostile code). The tests reach the harness on stdin, not in a file the
solution could read.

Answers are checked ``check_batch`` at a time in one sandboxed run, each in its own process, folder
and limits, the harness run in a fork of an already started interpreter (see
:mod:`~cycleqd.evaluation.sandbox.batch`); the verdicts are those of one run per answer.
"""

from __future__ import annotations

import ast
import json
import secrets
import warnings
from typing import Any

from pydantic import AliasChoices, Field

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import ItemResult
from cycleqd.evaluation.sandbox import SandboxResult
from cycleqd.evaluation.sandbox.batch import JobOutcome, SandboxJob
from cycleqd.evaluation.tasks.checks import DEFAULT_CHECK_BATCH, BatchedChecks, Check, CheckBatch
from cycleqd.evaluation.tasks.common import BuiltinTask, ExecParams, Item, extract_code, failed, passed

HARNESS = r'''
import ast
import json
import sys


def describe(test, env):
    """The value of the left side of a failed `assert x == y`, for the failure message."""
    try:
        node = ast.parse(test).body[0]
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):
            value = eval(compile(ast.Expression(node.test.left), "<test>", "eval"), env)
            text = repr(value)
            return text if len(text) <= 200 else text[:200] + "..."
    except BaseException:
        pass
    return None


def main():
    # The token and the tests come on stdin, so the solution cannot read them from a file.
    token = sys.stdin.readline().strip()
    spec = json.loads(sys.stdin.read())
    out = sys.stdout

    def report(verdict):
        out.write("\n" + token + json.dumps(verdict) + "\n")
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
            exec(test, env)
        except AssertionError:
            report({"status": "fail", "index": index, "test": test, "got": describe(test, env)})
            return
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"[:300]
            report({"status": "error", "index": index, "test": test, "message": message})
            return
    report({"status": "pass"})


main()
'''


def syntax_error(code: str) -> str | None:
    """The syntax error of a program as the harness would report it, found without running anything.

    The program is only parsed (:func:`ast.parse`: no compilation, no constant folding, nothing
    executed), which settles answers that are not Python at all without starting a sandbox. Programs
    the parser does not reject, and any case where parsing itself misbehaves, go to the sandbox.

    Args:
        code: The program.

    Returns:
        ``"<message> (line <n>)"``, or ``None`` when the program parses or the question is left to the
        sandbox.
    """
    if "\x00" in code or len(code) > 100_000:
        return None
    try:
        # The parser warns about dubious literals (``1if``): the answer's problem, not the user's.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(code, filename="solution.py")
    except SyntaxError as exc:
        return f"{exc.msg} (line {exc.lineno})"
    except (ValueError, RecursionError, MemoryError):
        return None
    return None


class PythonCodeParams(ExecParams):
    """Options of ``python_code`` (see :class:`~cycleqd.evaluation.tasks.common.ExecParams`).

    Attributes:
        answer_prefix: Text put before the extracted answer to make the program (the model then
            completes it, for instance ``def f(x): return `` followed by an expression).
        check_batch: Answers checked in one sandboxed run, each in a process and folder of its own
            (see :mod:`~cycleqd.evaluation.sandbox.batch`); 1 runs a sandbox per answer. Verdicts are
            the same either way.
    """

    answer_prefix: str = ""
    check_batch: CheckBatch = DEFAULT_CHECK_BATCH


class PythonCodeItem(Item):
    """A ``python_code`` item."""

    prompt: str = Field(validation_alias=AliasChoices("prompt", "text"))
    tests: list[str] = Field(min_length=1, validation_alias=AliasChoices("tests", "test_list"))
    setup: str = Field("", validation_alias=AliasChoices("setup", "test_setup_code"))
    reference: str | None = None


class PythonCodeTask(BatchedChecks, BuiltinTask[PythonCodeParams, PythonCodeItem]):
    """Code generation judged by running the item's tests in the sandbox."""

    params_model = PythonCodeParams
    item_model = PythonCodeItem
    uses_sandbox = True
    default_template = (
        "{prompt}\nYour code should pass these tests:\n{tests_text}\n"
        "Write the Python function in a ```python code block."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._checked: set[tuple[str, str]] = set()

    def prompt_fields(self, item: PythonCodeItem) -> dict[str, Any]:  # noqa: D102
        return {**item.model_dump(), "tests_text": "\n".join(item.tests)}

    def program(self, output: str) -> str:
        """The program an answer stands for: ``answer_prefix`` and the extracted code.

        Args:
            output: What the model wrote.

        Returns:
            The program, or ``""`` when the answer holds no code.
        """
        code = extract_code(output, languages=("python", "py", "python3"), mode=self.params.extract)
        return self.params.answer_prefix + code if code.strip() else ""

    def answer_key(self, item: PythonCodeItem, output: str) -> str | None:  # noqa: D102
        return self.program(output)

    def prepare(self, split: str) -> None:
        """Check the reference answers of a split in the sandbox (once); their verdicts are remembered.

        Args:
            split: The split.

        Raises:
            ConfigError: When a reference does not pass its item's tests.
        """
        done = self._checked
        todo = [i for i in self.items(split) if i.reference is not None and (split, i.id) not in done]
        results = self.judge_all([(item, item.reference or "") for item in todo])
        for item, result in zip(todo, results, strict=True):
            if not result.correct:
                raise ConfigError(
                    f"task {self.name}: item {item.id!r} ({split}): the reference fails its own tests: "
                    f"{result.reason}; fix the item's reference or tests"
                )
            done.add((split, item.id))

    def plan(self, item: PythonCodeItem, output: str) -> ItemResult | Check:
        """The verdict of an answer that needs no run (no code, a syntax error), else its check.

        Args:
            item: The item.
            output: What the model wrote.

        Returns:
            The verdict, or the check that will give it.
        """
        code = self.program(output)
        if not code.strip():
            return failed(item, output, "malformed: the answer holds no code")
        syntax = syntax_error(code)
        if syntax is not None:
            return failed(item, output, f"syntax error: {syntax}", code=code)
        token = secrets.token_hex(16)
        job = SandboxJob(
            argv=(self.context.sandbox.python, "-I", "../support/harness.py"),
            files={"solution.py": code},
            support_files={"harness.py": HARNESS},
            stdin=token + "\n" + json.dumps({"setup": item.setup, "tests": item.tests}),
            warm=True,
        )

        def finish(outcome: JobOutcome) -> ItemResult:
            return self.verdict(item, output, code, token, outcome.result)

        return Check(job, finish)

    def verdict(
        self, item: PythonCodeItem, output: str, code: str, token: str, result: SandboxResult
    ) -> ItemResult:
        """Judge what the harness reported (its verdict line carries the run's token).

        Args:
            item: The item.
            output: The model's answer.
            code: The program that ran.
            token: The run's token.
            result: The run.

        Returns:
            The item's result.
        """
        detail: dict[str, Any] = {"code": code}
        verdict = None
        for line in reversed(result.stdout.splitlines()):
            if line.startswith(token):
                try:
                    verdict = json.loads(line[len(token) :])
                except json.JSONDecodeError:
                    verdict = None
                break
        if verdict is None:
            reason = result.failure() or "the program ended before the tests finished"
            return failed(item, output, reason, **detail, stderr=result.stderr[-1000:])
        status = verdict.get("status")
        if status == "pass":
            return passed(item, output, **detail)
        if status == "syntax":
            return failed(item, output, f"syntax error: {verdict.get('message')}", **detail)
        if status == "load":
            return failed(item, output, f"crashed while loading: {verdict.get('message')}", **detail)
        if status == "fail":
            got = verdict.get("got")
            reason = f"test {verdict.get('index')} failed: {verdict.get('test')}" + (
                f" (got {got})" if got else ""
            )
            return failed(item, output, reason, **detail)
        return failed(
            item,
            output,
            f"test {verdict.get('index')} crashed: {verdict.get('message')} in {verdict.get('test')}",
            **detail,
        )
