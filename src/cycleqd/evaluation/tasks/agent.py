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

Items, ``env: sql``: ``question``, the database (``schema`` and/or ``tables``), and ``reference`` (SQL)
and/or ``answer`` (the expected values). A query reference (or ``answer``) is judged on the final
answer's values (a Python literal, flattened; as a multiset unless the reference orders its rows); a
modifying reference is judged on the database contents when the model answers.

Items, ``env: shell``: ``instruction``, ``files``, and one or more of ``expected_answer``,
``reference`` (a command whose output is the expected answer), ``check`` (a command run in the folder
after the episode, given the answer as ``$1``; exit status 0 passes) and ``expected_tree``.

Saved predictions for this kind are the list of the model's turns; scoring them replays the turns
against a fresh environment.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import Backend, ItemResult, Message, Prompt
from cycleqd.evaluation.sandbox import SandboxSession
from cycleqd.evaluation.tasks.common import (
    BuiltinTask,
    ExecParams,
    Item,
    brief,
    clip,
    extract_code,
    failed,
    passed,
)
from cycleqd.evaluation.tasks.shellenv import (
    FilesFields,
    file_list,
    normalize_output,
    snapshot,
    tree_difference,
    tree_from_files,
)
from cycleqd.evaluation.tasks.sql import ReferenceCache, build_reference
from cycleqd.evaluation.tasks.sqlenv import (
    RUNNER,
    DatabaseFields,
    SQLError,
    flatten_rows,
    is_query,
    parse_answer_values,
    run_sql,
    tables_difference,
)

SQL_SYSTEM = """You are an agent that answers questions about a SQLite database by running SQL.
Each turn, do exactly one of the following.
1. Run one SQL statement and see its result:
Action: Operation
```sql
SELECT * FROM table_name;
```
2. Give your final answer (the values asked for, as a list):
Action: Answer
Final Answer: ["value", 3]
When the question asks you to change the database, make the changes with operations, then answer
"Final Answer: done". You have at most {max_rounds} turns."""

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

_FINAL = re.compile(r"final\s+answer\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)
_ACTION = re.compile(r"action\s*:\s*(operation|answer)", re.IGNORECASE)


class AgentParams(ExecParams):
    """Options of ``agent``.

    Attributes:
        env: ``sql`` or ``shell``.
        max_rounds: Most model turns per episode.
        max_observation_chars: Environment answers are cut to this length.
        shell: Shell of the ``shell`` environment.
        max_rows: Most rows of a SQL result.
        float_digits: Decimal places compared of floats.
        show_rows: Rows of each table shown in the SQL prompt.
    """

    env: Literal["sql", "shell"]
    max_rounds: int = Field(8, gt=0)
    max_observation_chars: int = Field(800, gt=0)
    shell: str = "bash"
    max_rows: int = Field(10000, gt=0)
    float_digits: int = Field(6, ge=0)
    show_rows: int = Field(3, ge=0)


class AgentSQLItem(Item, DatabaseFields):
    """An ``agent`` item of the SQL environment."""

    question: str
    reference: str | None = None
    answer: list[Any] | str | int | float | None = None
    compare: Literal["auto", "result", "tables"] = "auto"
    ordered: bool | None = None

    @model_validator(mode="after")
    def _has_expectation(self) -> AgentSQLItem:
        if self.reference is None and self.answer is None:
            raise ValueError("give a reference (SQL) and/or the expected answer")
        if self.reference is None and self.compare == "tables":
            raise ValueError("compare: tables needs a reference statement")
        return self

    @property
    def mode(self) -> Literal["result", "tables"]:
        """How the episode is judged."""
        if self.compare != "auto":
            return self.compare
        if self.reference is None:
            return "result"
        return "result" if is_query(self.reference) else "tables"


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
        self._sql_cache = ReferenceCache()
        self._answers: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        super().__init__(**kwargs)

    # -- items and prompts -------------------------------------------------------------------------
    def _validate_item(self, obj: Mapping[str, Any]) -> Any:
        self.item_model = AgentSQLItem if self.params.env == "sql" else AgentShellItem  # type: ignore[misc]
        return super()._validate_item(obj)

    @property
    def default_template(self) -> str:  # type: ignore[override]
        """The first user message."""
        if self.params.env == "sql":
            return "Database (SQLite):\n{schema}\n\nQuestion: {question}"
        return "The folder holds: {file_list}.\nTask: {instruction}"

    def prompt_fields(self, item: Any) -> dict[str, Any]:  # noqa: D102
        fields = item.model_dump()
        if self.params.env == "sql":
            fields["schema"] = item.schema_text(show_rows=self.params.show_rows)
        else:
            fields["file_list"] = file_list(item.files)
        return fields

    def system_prompt(self) -> str:
        """The system message (the task's ``system`` param, else the environment's protocol)."""
        if self.params.system is not None:
            return self.params.system
        text = SQL_SYSTEM if self.params.env == "sql" else SHELL_SYSTEM
        return text.replace("{max_rounds}", str(self.params.max_rounds))

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
        if self.params.env == "sql":
            todo = [i for i in self.items(split) if (split, i.id) not in self._sql_cache.dbs]
            self.map_items(lambda item: self._prepare_sql(split, item), todo)  # type: ignore[arg-type,return-value]
        else:
            todo = [
                i for i in self.items(split) if i.reference is not None and (split, i.id) not in self._answers
            ]
            self.map_items(lambda item: self._prepare_shell(split, item), todo)  # type: ignore[arg-type,return-value]

    def _prepare_sql(self, split: str, item: AgentSQLItem) -> None:
        p = self.params
        if item.reference is not None:
            db, ref = build_reference(self, item, max_rows=p.max_rows, digits=p.float_digits)
        else:
            try:
                answer, data = run_sql(
                    self.context.sandbox, item.build_job(), limits=self.limits(), keep_db=True
                )
            except SQLError as exc:
                raise ConfigError(
                    f"task {self.name}: item {item.id!r}: cannot build its database: {exc}"
                ) from None
            if not answer.get("ok") or data is None:
                raise ConfigError(
                    f"task {self.name}: item {item.id!r}: cannot build its database: {answer.get('error')}"
                )
            db, ref = data, None
        with self._lock:
            self._sql_cache.dbs[(split, item.id)] = db
            if ref is not None:
                self._sql_cache.refs[(split, item.id)] = ref

    def _prepare_shell(self, split: str, item: AgentShellItem) -> None:
        assert item.reference is not None
        with self.context.sandbox.session(files=item.files) as s:
            result = s.run([self.params.shell, "-c", item.reference], limits=self.limits())
        if result.stopped:
            raise ConfigError(
                f"task {self.name}: item {item.id!r}: the reference command fails: {result.failure()}"
            )
        with self._lock:
            self._answers[(split, item.id)] = normalize_output(result.stdout)

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
        sandbox = self.context.sandbox
        if self.params.env == "sql":
            db = self._sql_cache.dbs[(item.split, item.id)]
            session = stack.enter_context(
                sandbox.session(files={"db.sqlite": db}, support_files={"sql_runner.py": RUNNER})
            )
        else:
            session = stack.enter_context(sandbox.session(files=item.files))
        return Episode(item=item, session=session, messages=self.first_messages(item))

    def _step(self, episode: Episode, turn: str | None) -> ItemResult | None:
        if turn is None:
            episode.done = True
            episode.error = "the recorded turns end without a final answer"
            return None
        episode.turns.append(turn)
        episode.messages.append({"role": "assistant", "content": turn})
        languages = ("sql", "sqlite") if self.params.env == "sql" else ("bash", "sh", "shell")
        kind, text = parse_action(turn, languages=languages)
        if kind == "answer":
            episode.answer = text
            episode.done = True
            return None
        if kind == "invalid":
            observation = f"Invalid action: {text}. Reply with an operation or a final answer, as instructed."
        elif self.params.env == "sql":
            observation = self._run_sql(episode, text)
        else:
            observation = self._run_shell(episode, text)
        limit = self.params.max_observation_chars
        if len(observation) > limit:
            observation = observation[:limit] + f"\n... (cut at {limit} characters)"
        episode.observations.append(observation)
        episode.messages.append({"role": "user", "content": observation})
        return None

    def _run_sql(self, episode: Episode, sql: str) -> str:
        try:
            answer, _ = run_sql(
                episode.session,
                {"mode": "statement", "sql": sql, "max_rows": self.params.max_rows},
                limits=self.limits(),
            )
        except SQLError as exc:
            return f"Error: {exc}"
        if not answer.get("ok"):
            return f"Error: {answer.get('error')}"
        if "rows" in answer:
            rows = [tuple(r) for r in answer["rows"]]
            return repr(rows) if rows else "[] (no rows)"
        return f"Query OK, {answer.get('rowcount', 0)} row(s) affected."

    def _run_shell(self, episode: Episode, command: str) -> str:
        result = episode.session.run([self.params.shell, "-c", command], limits=self.limits())
        if result.stopped:
            return f"Error: {result.failure()}"
        text = (result.stdout + result.stderr).rstrip("\n")
        if result.returncode not in (0, None):
            text += f"\n(exit status {result.returncode})"
        return text or "(no output)"

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
        why = self._judge_sql(episode) if self.params.env == "sql" else self._judge_shell(episode)
        if why is None:
            return passed(item, transcript, **detail)
        return failed(item, transcript, why, **detail)

    def _judge_sql(self, episode: Episode) -> str | None:
        item: AgentSQLItem = episode.item
        p = self.params
        ref = self._sql_cache.refs.get((item.split, item.id))
        if item.mode == "tables":
            assert ref is not None
            assert ref.tables is not None
            try:
                answer, _ = run_sql(
                    episode.session, {"mode": "dump", "max_rows": p.max_rows}, limits=self.limits()
                )
            except SQLError as exc:
                return f"cannot read the database after the episode: {exc}"
            if not answer.get("ok"):
                return f"cannot read the database after the episode: {answer.get('error')}"
            return tables_difference(answer["tables"], ref.tables, digits=p.float_digits)
        assert episode.answer is not None
        got = parse_answer_values(episode.answer, digits=p.float_digits)
        if item.answer is not None:
            expected = parse_answer_values(repr(item.answer), digits=p.float_digits)
            ordered = bool(item.ordered)
        else:
            assert ref is not None
            assert ref.rows is not None
            expected = flatten_rows(ref.rows, digits=p.float_digits)
            ordered = ref.ordered
        same = got == expected if ordered else Counter(map(repr, got)) == Counter(map(repr, expected))
        if same:
            return None
        return f"final answer differs: expected {brief(repr(expected))}, got {brief(repr(got))}"

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
                [self.params.shell, "-c", item.check, "check", answer], limits=self.limits()
            )
            if not result.ok:
                out = (result.stdout + result.stderr).strip()
                return (
                    "the check failed: " + (result.failure() or "") + (f" ({clip(out, 120)})" if out else "")
                )
        if item.expected_tree is not None:
            return tree_difference(snapshot(episode.session.workdir), tree_from_files(item.expected_tree))
        return None
