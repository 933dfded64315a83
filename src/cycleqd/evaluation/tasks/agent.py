"""``agent``: multi-round interaction with a SQL or shell environment, as in AgentBench (DB and OS).

Each round the model either runs one operation (a SQL statement, or a bash command) and sees its result,
or gives its final answer; after ``max_rounds`` rounds without one, the item fails. The environment
keeps its state across rounds (the same database file, the same folder; shell variables do not carry
over, each command runs in a fresh ``bash -c``). Every operation runs in the sandbox. The episodes of
all items advance together, one batched generation per round.

Turn format (set out in the default system prompt)::

    Action: Operation
    ```sql
    SELECT ...
    ```

    Action: Answer
    Final Answer: ["Alice", 3]

The environments (their items, prompts, operations and judging) are strategy objects of
:mod:`.agent_env`: ``env: sql`` (:mod:`.agent_sql`) and ``env: shell`` (:mod:`.agent_shell`).

Saved predictions for this kind are the list of the model's turns; scoring them replays the turns
against a fresh environment.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from cycleqd.evaluation.base import Backend, ItemResult, Message, Prompt
from cycleqd.evaluation.tasks.agent_env import AgentEnvironment, Episode
from cycleqd.evaluation.tasks.agent_shell import ShellEnvironment
from cycleqd.evaluation.tasks.agent_sql import SQLEnvironment
from cycleqd.evaluation.tasks.common import (
    BuiltinTask,
    ExecParams,
    Item,
    extract_code,
    failed,
    passed,
)

_FINAL = re.compile(r"final\s+answer\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)
_ACTION = re.compile(r"action\s*:\s*(operation|answer)", re.IGNORECASE)


#: Environment name (the ``env`` param) → its class. A new environment is one module plus one line here.
AGENT_ENVS: dict[str, type[AgentEnvironment]] = {"sql": SQLEnvironment, "shell": ShellEnvironment}


class AgentParams(ExecParams):
    """Options of ``agent``.

    Attributes:
        env: An environment of :data:`AGENT_ENVS` (``sql``, ``shell``).
        max_rounds: Most model turns per episode.
        max_observation_chars: Environment answers are cut to this length.
        shell: Shell of the ``shell`` environment.
        max_rows: Most rows of a SQL result.
        float_digits: Decimal places compared of floats.
        show_rows: Rows of each table shown in the SQL prompt.
    """

    env: str
    max_rounds: int = Field(8, gt=0)
    max_observation_chars: int = Field(800, gt=0)
    shell: str = "bash"
    max_rows: int = Field(10000, gt=0)
    float_digits: int = Field(6, ge=0)
    show_rows: int = Field(3, ge=0)

    @field_validator("env")
    @classmethod
    def _known_env(cls, v: str) -> str:
        if v not in AGENT_ENVS:
            raise ValueError(f"unknown environment {v!r}; choose one of {', '.join(AGENT_ENVS)}")
        return v


def parse_action(
    text: str, *, languages: tuple[str, ...]
) -> tuple[Literal["answer", "operation", "invalid"], str]:
    """What a model's turn asks for.

    Args:
        text: The turn.
        languages: Code-block tags of the environment's language.

    Returns:
        ``("answer", final answer)``, ``("operation", code)`` or ``("invalid", why)``.
    """
    action = _ACTION.search(text)
    final = _FINAL.search(text)
    wants_answer = action is not None and action.group(1).lower() == "answer"
    if final is not None and (wants_answer or "```" not in text):
        return "answer", final.group(1).strip()
    if wants_answer:
        return "invalid", 'an answer must be written "Final Answer: ..."'
    if "```" in text:
        code = extract_code(text, languages=languages).strip()
        if code:
            return "operation", code
    return "invalid", "no operation in a fenced code block and no final answer"


class AgentTask(BuiltinTask[AgentParams, Item]):
    """Multi-round episodes in a SQL or shell environment, judged on the final answer or state."""

    kind: ClassVar[str] = "agent"

    params_model = AgentParams
    item_model = Item
    uses_sandbox = True

    def __init__(self, **kwargs: Any) -> None:
        self._env: AgentEnvironment | None = None
        super().__init__(**kwargs)

    @property
    def env(self) -> AgentEnvironment:
        """The environment the ``env`` param names (made on first use)."""
        if self._env is None:
            self._env = AGENT_ENVS[self.params.env](self)
        return self._env

    # -- items and prompts -------------------------------------------------------------------------
    def _validate_item(self, obj: Mapping[str, Any]) -> Any:
        self.item_model = self.env.item_model  # type: ignore[misc]
        return super()._validate_item(obj)

    @property
    def default_template(self) -> str:  # type: ignore[override]
        """The first user message."""
        return self.env.template

    def prompt_fields(self, item: Any) -> dict[str, Any]:  # noqa: D102
        return self.env.prompt_fields(item, item.model_dump())

    def system_prompt(self) -> str:
        """The system message (the task's ``system`` param, else the environment's protocol)."""
        if self.params.system is not None:
            return self.params.system
        return self.env.system.replace("{max_rounds}", str(self.params.max_rounds))

    def first_messages(self, item: Any) -> list[Message]:
        """System message and the task as the first user message."""
        user = self.template.format(**self.prompt_fields(item))
        return [{"role": "system", "content": self.system_prompt()}, {"role": "user", "content": user}]

    # -- preparation -------------------------------------------------------------------------------
    def prepare(self, split: str) -> None:
        """Build the SQL databases and run the references of a split (once).

        Args:
            split: The split.

        Raises:
            ConfigError: When a database, reference or reference command fails.
        """
        self.env.prepare(split, self.items(split))

    # -- episodes ----------------------------------------------------------------------------------
    def run(self, backend: Backend, items: list[Any]) -> list[ItemResult]:  # noqa: D102
        def policy(episodes: list[Episode]) -> list[str | None]:
            return list(
                # Copies: the conversations grow after this call, the prompts must not.
                backend.generate(
                    [list(e.messages) for e in episodes],
                    max_new_tokens=self.max_new_tokens(),
                    stop=self.stop(),
                )
            )

        return self._play(items, policy)

    def teacher_pairs(  # noqa: D102 - every turn, with the conversation before it
        self, backend: Backend, *, split: str = "validation", limit: int | None = None
    ) -> list[tuple[Prompt, str]]:
        items = self._require_items(split)[:limit]
        self.prepare(split)
        pairs: list[tuple[Prompt, str]] = []

        def policy(episodes: list[Episode]) -> list[str | None]:
            contexts = [list(e.messages) for e in episodes]
            turns = backend.generate(contexts, max_new_tokens=self.max_new_tokens(), stop=self.stop())
            pairs.extend(zip(contexts, turns, strict=True))
            return list(turns)

        self._play(items, policy)
        return pairs

    def replay(self, items: list[Any], predictions: Mapping[str, Any]) -> list[ItemResult]:  # noqa: D102
        def policy(episodes: list[Episode]) -> list[str | None]:
            out: list[str | None] = []
            for e in episodes:
                turns = predictions.get(e.item.id)
                if isinstance(turns, str):
                    turns = [turns]
                n = len(e.turns)
                out.append(str(turns[n]) if isinstance(turns, list) and n < len(turns) else None)
            return out

        return self._play(items, policy, replaying=True, predictions=predictions)

    def _play(
        self,
        items: list[Any],
        policy: Callable[[list[Episode]], list[str | None]],
        *,
        replaying: bool = False,
        predictions: Mapping[str, Any] | None = None,
    ) -> list[ItemResult]:
        with contextlib.ExitStack() as stack:
            episodes = [self._start(stack, item) for item in items]
            for _ in range(self.params.max_rounds):
                active = [e for e in episodes if not e.done]
                if not active:
                    break
                turns = policy(active)
                self.map_items(lambda pair: self._step(*pair), list(zip(active, turns, strict=True)))  # type: ignore[arg-type,return-value]
            results = self.map_items(self._finish, episodes)  # type: ignore[arg-type]
        if replaying and predictions is not None:
            results = [
                failed(r_item, None, "no prediction for this item") if r_item.id not in predictions else r
                for r_item, r in zip(items, results, strict=True)
            ]
        return results

    def _start(self, stack: contextlib.ExitStack, item: Any) -> Episode:
        session = self.env.open(stack, item)
        return Episode(item=item, session=session, messages=self.first_messages(item))

    def _step(self, episode: Episode, turn: str | None) -> ItemResult | None:
        if turn is None:
            episode.done = True
            episode.error = "the recorded turns end without a final answer"
            return None
        episode.turns.append(turn)
        episode.messages.append({"role": "assistant", "content": turn})
        kind, text = parse_action(turn, languages=self.env.languages)
        if kind == "answer":
            episode.answer = text
            episode.done = True
            return None
        if kind == "invalid":
            observation = f"Invalid action: {text}. Reply with an operation or a final answer, as instructed."
        else:
            observation = self.env.operate(episode, text)
        limit = self.params.max_observation_chars
        if len(observation) > limit:
            observation = observation[:limit] + f"\n... (cut at {limit} characters)"
        episode.observations.append(observation)
        episode.messages.append({"role": "user", "content": observation})
        return None

    # -- judging -----------------------------------------------------------------------------------
    def judge(self, item: Any, output: str) -> ItemResult:
        """Judge a one-turn episode whose only turn is ``output``.

        Args:
            item: The item.
            output: The model's single turn.

        Returns:
            The item's result.
        """
        return self.replay([item], {item.id: [output]})[0]

    def _finish(self, episode: Episode) -> ItemResult:
        item = episode.item
        detail: dict[str, Any] = {
            "turns": episode.turns,
            "rounds": len(episode.turns),
            "final_answer": episode.answer,
        }
        transcript = episode.transcript()
        if episode.answer is None:
            reason = episode.error or f"no final answer within {self.params.max_rounds} rounds"
            return failed(item, transcript, reason, **detail)
        why = self.env.judge(episode)
        if why is None:
            return passed(item, transcript, **detail)
        return failed(item, transcript, why, **detail)
