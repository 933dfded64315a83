"""The shell environment of ``agent``: a folder the model works in with bash, one per episode.

Items: ``instruction``, ``files``, and one or more of ``expected_answer``, ``reference`` (a command
whose output is the expected answer), ``check`` (a command run in the folder after the episode, given
the answer as ``$1``; exit status 0 passes) and ``expected_tree``. Shell variables do not carry over
between operations: each command runs in a fresh ``bash -c``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import model_validator

from cycleqd.errors import ConfigError
from cycleqd.evaluation.sandbox import SandboxSession
from cycleqd.evaluation.tasks.agent_env import AgentEnvironment, AgentHost, Episode
from cycleqd.evaluation.tasks.common import Item, clip
from cycleqd.evaluation.tasks.shellenv import (
    FilesFields,
    file_list,
    normalize_output,
    snapshot,
    tree_difference,
    tree_from_files,
)

SHELL_SYSTEM = """You are an agent working in a Linux shell (bash), in a folder prepared for the task.
Each turn, do exactly one of the following.
1. Run a command and see its output:
Action: Operation
```bash
ls -l
```
2. Give your final answer:
Action: Answer
Final Answer: your answer
When the task asks you to change files, change them with operations, then answer "Final Answer: done".
You have at most {max_rounds} turns."""


class AgentShellItem(Item, FilesFields):
    """An ``agent`` item of the shell environment."""

    instruction: str
    expected_answer: str | None = None
    reference: str | None = None
    check: str | None = None
    expected_tree: dict[str, str] | None = None

    @model_validator(mode="after")
    def _has_expectation(self) -> AgentShellItem:
        if all(x is None for x in (self.expected_answer, self.reference, self.check, self.expected_tree)):
            raise ValueError("give expected_answer, reference, check and/or expected_tree")
        return self


class ShellEnvironment(AgentEnvironment):
    """A folder per episode, holding the item's files; operations are bash commands."""

    item_model: ClassVar[type[Item]] = AgentShellItem
    languages: ClassVar[tuple[str, ...]] = ("bash", "sh", "shell")
    system: ClassVar[str] = SHELL_SYSTEM
    template: ClassVar[str] = "The folder holds: {file_list}.\nTask: {instruction}"

    def __init__(self, task: AgentHost) -> None:
        super().__init__(task)
        self._answers: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def prompt_fields(self, item: Any, fields: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        return {**fields, "file_list": file_list(item.files)}

    def prepare(self, split: str, items: Sequence[Any]) -> None:  # noqa: D102
        todo = [i for i in items if i.reference is not None and (split, i.id) not in self._answers]
        self.task.map_items(lambda item: self._prepare(split, item), todo)

    def open(self, stack: contextlib.ExitStack, item: Any) -> SandboxSession:  # noqa: D102
        return stack.enter_context(self.task.context.sandbox.session(files=item.files))

    def operate(self, episode: Episode, code: str) -> str:  # noqa: D102
        return self._run_shell(episode, code)

    def judge(self, episode: Episode) -> str | None:  # noqa: D102
        return self._judge_shell(episode)

    def _prepare(self, split: str, item: AgentShellItem) -> None:
        assert item.reference is not None
        with self.task.context.sandbox.session(files=item.files) as s:
            result = s.run([self.task.params.shell, "-c", item.reference], limits=self.task.limits())
        if result.stopped:
            raise ConfigError(
                f"task {self.task.name}: item {item.id!r}: the reference command fails: {result.failure()}"
            )
        with self._lock:
            self._answers[(split, item.id)] = normalize_output(result.stdout)

    def _run_shell(self, episode: Episode, command: str) -> str:
        result = episode.session.run([self.task.params.shell, "-c", command], limits=self.task.limits())
        if result.stopped:
            return f"Error: {result.failure()}"
        text = (result.stdout + result.stderr).rstrip("\n")
        if result.returncode not in (0, None):
            text += f"\n(exit status {result.returncode})"
        return text or "(no output)"

    def _judge_shell(self, episode: Episode) -> str | None:
        item: AgentShellItem = episode.item
        answer = episode.answer or ""
        expected = item.expected_answer
        if expected is None and item.reference is not None:
            expected = self._answers[(item.split, item.id)]
        if expected is not None and normalize_output(answer).strip() != normalize_output(expected).strip():
            return f"final answer differs: expected {clip(expected.strip())}, got {clip(answer.strip())}"
        if item.check is not None:
            result = episode.session.run(
                [self.task.params.shell, "-c", item.check, "check", answer], limits=self.task.limits()
            )
            if not result.ok:
                out = (result.stdout + result.stderr).strip()
                return (
                    "the check failed: " + (result.failure() or "") + (f" ({clip(out, 120)})" if out else "")
                )
        if item.expected_tree is not None:
            return tree_difference(snapshot(episode.session.workdir), tree_from_files(item.expected_tree))
        return None
