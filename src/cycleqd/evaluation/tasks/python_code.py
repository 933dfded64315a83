"""``python_code``: the model writes a function that must pass the item's assert-style tests.

This is MBPP-style pass@1 with greedy decoding.

Item fields: ``prompt`` (the problem), ``tests`` (assert statements; ``test_list`` also accepted),
``setup`` (code run before the solution, such as imports; ``test_setup_code`` also accepted), optional
``reference`` (a right answer, written as the model should write it: it is checked once while preparing,
and must pass).

With the ``answer_prefix`` param the model writes only the end of the program: for instance with
``answer_prefix: "def f(x): return "`` an answer ``x+1`` is run as ``def f(x): return x+1``.

The answer's code (the first fenced Python block, else the whole answer) runs in the sandbox with a
small harness that executes the setup and the solution, then evaluates each test's operands and
writes their values as plain data; the comparison is made outside the sandbox, against literals that
never enter it (:mod:`~cycleqd.evaluation.tasks.python_judge`), so neither an object whose ``__eq__``
is always true nor an answer that reaches the harness can pass a test. The records carry a random
token given on stdin, so that what the program prints is not taken for them. The tests reach the
harness on stdin, not in a file the solution could read.

Answers are checked ``check_batch`` at a time in one sandboxed run, each in its own process, folder
and limits, the harness run in a fork of an already started interpreter (see
:mod:`~cycleqd.evaluation.sandbox.batch`); the verdicts are those of one run per answer.
"""

from __future__ import annotations

import ast
import json
import secrets
import warnings
from typing import Any, ClassVar

from pydantic import AliasChoices, Field

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import ItemResult
from cycleqd.evaluation.sandbox import SandboxResult
from cycleqd.evaluation.sandbox.batch import JobOutcome, SandboxJob
from cycleqd.evaluation.tasks.checks import DEFAULT_CHECK_BATCH, BatchedChecks, Check, CheckBatch
from cycleqd.evaluation.tasks.common import BuiltinTask, ExecParams, Item, extract_code, failed, passed
from cycleqd.evaluation.tasks.python_judge import (
    HARNESS,
    TestPlan,
    harness_records,
    judge_test,
    plan_test,
    sandbox_spec,
)


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

    kind: ClassVar[str] = "python_code"

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
        plans = [plan_test(t) for t in item.tests]
        job = SandboxJob(
            argv=(self.context.sandbox.python, "-I", "../support/harness.py"),
            files={"solution.py": code},
            support_files={"harness.py": HARNESS},
            stdin=token + "\n" + json.dumps(sandbox_spec(item.setup, plans)),
            warm=True,
        )

        def finish(outcome: JobOutcome) -> ItemResult:
            return self.verdict(item, output, code, token, outcome.result, plans=plans)

        return Check(job, finish)

    def verdict(
        self,
        item: PythonCodeItem,
        output: str,
        code: str,
        token: str,
        result: SandboxResult,
        *,
        plans: list[TestPlan],
    ) -> ItemResult:
        """Judge the values the harness reported, test by test (its records carry the run's token).

        Args:
            item: The item.
            output: The model's answer.
            code: The program that ran.
            token: The run's token.
            result: The run.
            plans: The item's tests as split for the run (:func:`plan_test`).

        Returns:
            The item's result: a pass only when every test passed.
        """
        # What the program itself printed (the harness's records left out), when it printed anything.
        own = "\n".join(ln for ln in result.stdout.splitlines() if not ln.startswith(token)).strip("\n")
        detail: dict[str, Any] = {"code": code}
        if own:
            detail["stdout"] = own[-2000:]
        if result.stderr:
            detail["stderr"] = result.stderr[-1000:]
        if result.disk_exceeded:  # whatever the tests said: the answer broke a limit of the sandbox
            return failed(item, output, result.failure() or "disk quota", **detail)
        records = harness_records(result.stdout, token)
        status = next((r for r in records if "status" in r), None)
        if status is not None and status.get("status") == "syntax":
            return failed(item, output, f"syntax error: {status.get('message')}", **detail)
        if status is not None and status.get("status") == "load":
            return failed(item, output, f"crashed while loading: {status.get('message')}", **detail)
        by_index: dict[int, dict[str, Any]] = {}
        for record in records:
            if isinstance(record.get("i"), int):
                by_index.setdefault(record["i"], record)  # the harness writes each test once
        for index, plan in enumerate(plans):
            judged = judge_test(index, plan, by_index.get(index))
            if judged.passed:
                continue
            if judged.reason is None:
                reason = result.failure() or (
                    f"the program wrote more than the output limit (evaluation.sandbox.max_output_kb), "
                    f"which cut off the results from test {index} on"
                    if result.output_truncated
                    else f"the program ended before test {index} finished"
                )
                return failed(item, output, reason, **detail)
            return failed(item, output, judged.reason, **detail)
        return passed(item, output, **detail)
