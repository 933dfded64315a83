"""Built-in task kinds. A new kind is one module here plus one line in :data:`TASK_KINDS`."""

from __future__ import annotations

from cycleqd.evaluation.base import Task
from cycleqd.evaluation.tasks.agent import AgentTask
from cycleqd.evaluation.tasks.choice import ChoiceTask
from cycleqd.evaluation.tasks.common import BuiltinTask, TaskContext
from cycleqd.evaluation.tasks.exact_match import ExactMatchTask
from cycleqd.evaluation.tasks.python_code import PythonCodeTask
from cycleqd.evaluation.tasks.shell import ShellTask
from cycleqd.evaluation.tasks.sql import SQLTask

#: Kind name in configs → task class (built as ``Class(name=..., data=..., context=..., **params)``).
TASK_KINDS: dict[str, type[Task]] = {
    cls.kind: cls for cls in (ExactMatchTask, PythonCodeTask, SQLTask, ShellTask, AgentTask, ChoiceTask)
}

__all__ = [
    "TASK_KINDS",
    "AgentTask",
    "BuiltinTask",
    "ChoiceTask",
    "ExactMatchTask",
    "PythonCodeTask",
    "SQLTask",
    "ShellTask",
    "TaskContext",
]
