"""``shell``: the model writes a shell command, run in the sandbox in a folder made from the item.

Item fields: ``instruction``; ``files`` (relative path → content); the expected outcome as a
``reference`` command (run the same way, once) and/or ``expected_output`` / ``expected_tree``
(relative path → content of every file afterwards); optional ``compare``: ``output``, ``tree`` or
``both`` (default: the task's ``compare`` param).

Outputs are compared after removing trailing blanks of each line and trailing empty lines; trees by
paths, file contents and symlink targets.

Commands (answers and references) run ``check_batch`` at a time in one sandboxed run, each in its own
process and fresh folder, which is snapshotted inside the sandbox before the next command runs (see
:mod:`~cycleqd.evaluation.sandbox.batch`); the verdicts are those of one run per command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import ItemResult
from cycleqd.evaluation.sandbox import SandboxResult
from cycleqd.evaluation.sandbox.batch import JobOutcome, SandboxJob, run_alone
from cycleqd.evaluation.tasks.checks import DEFAULT_CHECK_BATCH, BatchedChecks, Check, CheckBatch, run_jobs
from cycleqd.evaluation.tasks.common import BuiltinTask, ExecParams, Item, clip, extract_code, failed, passed
from cycleqd.evaluation.tasks.shellenv import (
    FilesFields,
    file_list,
    normalize_output,
    tree_difference,
    tree_from_files,
)

Compare = Literal["output", "tree", "both"]


class ShellParams(ExecParams):
    """Options of ``shell``.

    Attributes:
        shell: The shell that runs commands (``bash -c COMMAND``).
        compare: What must match by default: ``output``, ``tree`` or ``both``.
        include_stderr: Compare stdout followed by stderr instead of stdout alone.
        check_batch: Commands run in one sandboxed run, each in a process and folder of its own (see
            :mod:`~cycleqd.evaluation.sandbox.batch`); 1 runs a sandbox per command. Verdicts are the
            same either way.
    """

    shell: str = "bash"
    compare: Compare = "both"
    include_stderr: bool = False
    check_batch: CheckBatch = DEFAULT_CHECK_BATCH


class ShellItem(Item, FilesFields):
    """A ``shell`` item."""

    instruction: str
    reference: str | None = None
    expected_output: str | None = None
    expected_tree: dict[str, str] | None = None
    compare: Compare | None = None

    @model_validator(mode="after")
    def _has_expectation(self) -> ShellItem:
        if self.reference is None and self.expected_output is None and self.expected_tree is None:
            raise ValueError("give a reference command, or expected_output and/or expected_tree")
        return self


@dataclass(frozen=True)
class ShellOutcome:
    """What a command did: its (normalised) output and the folder afterwards."""

    output: str
    tree: dict[str, str]
    result: SandboxResult


class ShellTask(BatchedChecks, BuiltinTask[ShellParams, ShellItem]):
    """Shell commands judged by their output and the folder they leave."""

    kind: ClassVar[str] = "shell"

    params_model = ShellParams
    item_model = ShellItem
    uses_sandbox = True
    default_template = (
        "You are in a Linux shell, in a folder holding: {file_list}.\nTask: {instruction}\n"
        "Answer with one bash command in a ```bash code block."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._refs: dict[tuple[str, str], ShellOutcome] = {}

    def prompt_fields(self, item: ShellItem) -> dict[str, Any]:  # noqa: D102
        return {**item.model_dump(), "file_list": file_list(item.files)}

    def job(self, item: ShellItem, command: str) -> SandboxJob:
        """A command's run: in a fresh folder made from the item's files, snapshotted afterwards.

        Args:
            item: The item.
            command: The shell command.

        Returns:
            The job.
        """
        return SandboxJob(argv=(self.params.shell, "-c", command), files=item.files, snapshot=True)

    def outcome(self, ran: JobOutcome) -> ShellOutcome:
        """What a command did, as compared: its normalised output and the folder it left.

        Args:
            ran: The job's outcome.

        Returns:
            The outcome.
        """
        result = ran.result
        text = result.stdout + (result.stderr if self.params.include_stderr else "")
        return ShellOutcome(output=normalize_output(text), tree=ran.tree or {}, result=result)

    def run_command(self, item: ShellItem, command: str) -> ShellOutcome:
        """Run a command in a sandbox of its own, in a fresh folder made from the item's files.

        Args:
            item: The item.
            command: The shell command.

        Returns:
            What it did.
        """
        return self.outcome(run_alone(self.context.sandbox, self.job(item, command), limits=self.limits()))

    def prepare(self, split: str) -> None:
        """Run the reference commands of a split (once).

        Args:
            split: The split.

        Raises:
            ConfigError: When a reference command fails or times out.
        """
        todo = []
        for item in self.items(split):
            if item.reference is None or (split, item.id) in self._refs:
                continue
            shared = self.shared_reference("shell", item)
            if shared is not None:  # an identical task of this process ran it already
                self._refs[(split, item.id)] = shared
            else:
                todo.append(item)
        ran = run_jobs(self, [self.job(i, i.reference or "") for i in todo], size=self.params.check_batch)
        for item, got in zip(todo, ran, strict=True):
            assert item.reference is not None
            outcome = self.outcome(got)
            if outcome.result.timed_out or outcome.result.returncode is None:
                raise ConfigError(
                    f"task {self.name}: item {item.id!r} ({split}): the reference command fails: "
                    f"{outcome.result.failure()}"
                )
            self._refs[(split, item.id)] = outcome
            self.share_reference("shell", item, outcome)
            # What the reference did is already known: its verdict needs no second run.
            self.remember_verdict(
                item,
                item.reference,
                self.verdict(item, item.reference, self.extract(item.reference), outcome),
            )

    def extract(self, output: str) -> str:
        """The command of an answer (fenced shell block, or the text), stripped."""
        return extract_code(
            output, languages=("bash", "sh", "shell", "console"), mode=self.params.extract
        ).strip()

    def answer_key(self, item: ShellItem, output: str) -> str | None:  # noqa: D102
        return self.extract(output)

    def plan(self, item: ShellItem, output: str) -> ItemResult | Check:
        """The verdict of an answer without a command, else its check.

        Args:
            item: The item.
            output: What the model wrote.

        Returns:
            The verdict, or the check that will give it.
        """
        command = self.extract(output)
        if not command:
            return failed(item, output, "malformed: the answer holds no command")

        def finish(ran: JobOutcome) -> ItemResult:
            return self.verdict(item, output, command, self.outcome(ran))

        return Check(self.job(item, command), finish)

    def verdict(self, item: ShellItem, output: str, command: str, outcome: ShellOutcome) -> ItemResult:
        """Judge what a command did against the item's expectations.

        Args:
            item: The item.
            output: The model's answer.
            command: The command extracted from it.
            outcome: What running the command did.

        Returns:
            The item's result.
        """
        detail = {
            "command": command,
            "stdout": outcome.output[-2000:],
            "exit_status": outcome.result.returncode,
        }
        if outcome.result.stopped:
            return failed(item, output, outcome.result.failure() or "timed out", **detail)
        ref = self._refs.get((item.split, item.id))
        compare = item.compare or self.params.compare
        if compare in ("output", "both"):
            expected = (
                normalize_output(item.expected_output)
                if item.expected_output is not None
                else ref.output
                if ref
                else None
            )
            if expected is not None and outcome.output != expected:
                crash = outcome.result.failure()
                return failed(
                    item,
                    output,
                    f"output differs: expected {clip(expected)}, got {clip(outcome.output)}"
                    + (f" ({crash})" if crash else ""),
                    **detail,
                )
        if compare in ("tree", "both"):
            if item.expected_tree is not None:
                expected_tree = tree_from_files(item.expected_tree)
            elif ref is not None:
                expected_tree = ref.tree
            else:
                expected_tree = tree_from_files(item.files)
            diff = tree_difference(outcome.tree, expected_tree)
            if diff is not None:
                return failed(item, output, diff, **detail)
        return passed(item, output, **detail)
