"""What an ``agent`` environment is: how it prompts, prepares, runs an operation and judges an episode.

:class:`~cycleqd.evaluation.tasks.agent.AgentTask` plays the episodes; everything that differs
between a SQL database and a shell folder is an :class:`AgentEnvironment`, one class per module
(:mod:`.agent_sql`, :mod:`.agent_shell`), chosen by the task's ``env`` param.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from cycleqd.evaluation.base import Message
from cycleqd.evaluation.sandbox import SandboxLimits, SandboxSession
from cycleqd.evaluation.tasks.common import Item, TaskContext


class AgentHost(Protocol):
    """What an environment uses of its task (:class:`~cycleqd.evaluation.tasks.agent.AgentTask`)."""

    name: str
    params: Any
    context: TaskContext

    def limits(self) -> SandboxLimits:
        """The sandbox limits of one operation."""
        ...

    def map_items(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``fn`` over items, on the task's worker threads."""
        ...


@dataclass
class Episode:
    """One item's interaction so far."""

    item: Any
    session: SandboxSession
    messages: list[Message]
    turns: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    answer: str | None = None
    done: bool = False
    error: str | None = None

    def transcript(self) -> str:
        """The model's turns and the environment's answers, as text."""
        parts = []
        for i, turn in enumerate(self.turns):
            parts.append(f"[model]\n{turn}")
            if i < len(self.observations):
                parts.append(f"[environment]\n{self.observations[i]}")
        return "\n".join(parts)


class AgentEnvironment(ABC):
    """One kind of environment an agent acts in (its state lives in a sandbox session per episode).

    Args:
        task: The task whose params, sandbox and limits the environment uses.
    """

    #: The item model of the environment's items.
    item_model: ClassVar[type[Item]]
    #: Code-block tags of the environment's language (what an operation is written in).
    languages: ClassVar[tuple[str, ...]]
    #: The default system prompt (``{max_rounds}`` is filled in).
    system: ClassVar[str]
    #: The default first user message.
    template: ClassVar[str]

    def __init__(self, task: AgentHost) -> None:
        self.task = task

    def prompt_fields(self, item: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields of an item's first message (the item's own, plus what the environment shows)."""
        return fields

    @abstractmethod
    def prepare(self, split: str, items: Sequence[Any]) -> None:
        """Make what judging a split needs (databases, reference answers), once per item.

        Raises:
            ConfigError: When a database or a reference fails.
        """

    @abstractmethod
    def open(self, stack: contextlib.ExitStack, item: Any) -> SandboxSession:
        """A sandbox session holding the item's starting state, closed with ``stack``."""

    @abstractmethod
    def operate(self, episode: Episode, code: str) -> str:
        """Run one operation of the model in the episode's session; what the environment answers."""

    @abstractmethod
    def judge(self, episode: Episode) -> str | None:
        """Why an episode with a final answer fails, or ``None`` when it passes."""
