"""What the built-in task kinds share: params and item validation, prompts, scoring loops."""

from __future__ import annotations

import dataclasses
import re
import string
import uuid
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import SPLIT_NAMES, SPLITS, Backend, ItemResult, Prompt, Task, TaskResult
from cycleqd.evaluation.sandbox import Sandbox, SandboxLimits
from cycleqd.evaluation.tasks.memo import PROCESS_MEMOS, Memos
from cycleqd.validation import inline_problems


@dataclass
class TaskContext:
    """Run-wide settings handed to built-in tasks by the builder.

    Attributes:
        sandbox: Where model-written programs run.
        max_new_tokens: Default answer length when a task sets none.
        workers: Sandboxed checks run in parallel.
        memos: Verdicts and prepared references, shared by tasks with the same signature (default:
            the process's, so that the runs of one process judge an answer once and alike).
    """

    sandbox: Sandbox = field(default_factory=Sandbox)
    max_new_tokens: int = 512
    workers: int = 4
    memos: Memos = field(default_factory=lambda: PROCESS_MEMOS)

    def signature(self) -> dict[str, Any]:
        """The settings that can change a score (for result-cache keys)."""
        return {"limits": dataclasses.asdict(self.sandbox.limits), "max_new_tokens": self.max_new_tokens}


class Params(BaseModel):
    """Options every built-in kind takes (``params:`` of a task).

    Attributes:
        prompt_template: Python format string filled with the item's fields (see each kind).
        system: System message; when set, prompts are chat messages (system + user).
        limit: Use only the first N items of each split (for quick runs).
    """

    model_config = ConfigDict(extra="forbid")

    prompt_template: str | None = None
    system: str | None = None
    limit: int | None = Field(None, gt=0)


class GenerationParams(Params):
    """Options of kinds where the model writes an answer.

    Attributes:
        max_new_tokens: Most tokens per answer (default: ``evaluation.max_new_tokens``).
        stop: Strings that end an answer (not included in it).
    """

    max_new_tokens: int | None = Field(None, gt=0)
    stop: list[str] | None = None


class ExecParams(GenerationParams):
    """Options of kinds that execute what the model wrote in the sandbox.

    Attributes:
        timeout_s: Wall-clock limit per run (default: ``evaluation.sandbox.timeout_s``).
        memory_mb: Memory limit per run (default: ``evaluation.sandbox.memory_mb``).
        extract: ``auto`` takes the first fenced code block when there is one; ``raw`` uses the text.
        memoize: Reuse the verdict of a program already judged for the same item instead of running it
            again (see :mod:`~cycleqd.evaluation.tasks.memo`); reference answers checked while
            preparing are remembered as well.
    """

    timeout_s: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, gt=0)
    extract: str = Field("auto", pattern="^(auto|raw)$")
    memoize: bool = True


class Item(BaseModel):
    """Fields every item has; kinds add theirs. Extra fields are kept (usable in prompt templates)."""

    model_config = ConfigDict(extra="allow")

    id: str
    split: str


P = TypeVar("P", bound=Params)
I = TypeVar("I", bound=Item)  # noqa: E741 - the conventional name for an item type variable
A = TypeVar("A")
R = TypeVar("R")


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str, *, languages: Sequence[str], mode: str = "auto") -> str:
    """The program in a model's answer.

    With ``mode="auto"``: the first fenced block tagged with one of ``languages``, else the first
    untagged fenced block, else the whole text; ``raw`` keeps the whole text.

    Args:
        text: The model's answer.
        languages: Fence tags that mark the wanted language (``python``, ``py``).
        mode: ``auto`` or ``raw``.

    Returns:
        The code, stripped of surrounding blank lines.
    """
    if mode == "raw":
        return text.strip("\n")
    blocks = _FENCE.findall(text)
    for tag, body in blocks:
        if tag.lower() in languages:
            return body.strip("\n")
    for tag, body in blocks:
        if not tag:
            return body.strip("\n")
    return text.strip("\n")


def template_fields(template: str) -> list[str]:
    """Names of the fields a format string uses."""
    names = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name:
            names.append(re.split(r"[.\[]", name, maxsplit=1)[0])
    return names


def brief(text: str, n: int = 200) -> str:
    """A text cut to ``n`` characters (no quoting), for reasons."""
    return text if len(text) <= n else text[:n] + "…"


def clip(text: str | None, n: int = 200) -> str:
    """``repr`` of a text cut to ``n`` characters, for reasons."""
    if text is None:
        return "None"
    return repr(text if len(text) <= n else text[:n] + "…")


class BuiltinTask(Task, Generic[P, I]):
    """A built-in kind: validated params and items, prompts from a template, per-item judging.

    Subclasses set :attr:`params_model`, :attr:`item_model` and :attr:`default_template` and implement
    :meth:`run` (or :meth:`judge` for kinds that generate one answer per item).

    Args:
        name: Task name.
        data: Items by split (from :func:`~cycleqd.evaluation.data.load_items`).
        context: Run-wide settings (sandbox, defaults).
        **params: The kind's options (validated by :attr:`params_model`; unknown ones are errors).

    Raises:
        ConfigError: For bad params or items.
    """

    params_model: ClassVar[type[Params]] = Params
    item_model: ClassVar[type[Item]] = Item
    default_template: ClassVar[str] = "{prompt}"
    #: Whether judging runs sandboxed programs (then items are judged in parallel).
    uses_sandbox: ClassVar[bool] = False

    def __init__(
        self,
        *,
        name: str,
        data: Mapping[str, Sequence[Mapping[str, Any]]],
        context: TaskContext | None = None,
        **params: Any,
    ) -> None:
        super().__init__(name=name)
        self.context = context or TaskContext()
        # Identity of this instance in the verdict memo until a builder sets the task's signature.
        self._memo_token = f"instance:{uuid.uuid4().hex}"
        try:
            self.params: P = self.params_model.model_validate(params)  # type: ignore[assignment]
        except ValidationError as exc:
            raise ConfigError(
                f"task {name} ({self.kind_name()}): bad params: {inline_problems(exc)}"
            ) from None
        self._items: dict[str, list[I]] = {}
        for split in SPLITS:
            raw = list(data.get(split, []))
            if self.params.limit is not None:
                raw = raw[: self.params.limit]
            self._items[split] = [self._validate_item(obj) for obj in raw]
        self.template = self.params.prompt_template or self.default_template
        for items in self._items.values():
            for item in items:
                self._check_template(item)

    @classmethod
    def kind_name(cls) -> str:
        """The kind's name in configs (its ``kind``; a custom class without one: its class name)."""
        return str(getattr(cls, "kind", cls.__name__))

    def _validate_item(self, obj: Mapping[str, Any]) -> I:
        try:
            item = self.item_model.model_validate(obj)
        except ValidationError as exc:
            raise ConfigError(
                f"task {self.name}: item {obj.get('id')!r} ({obj.get('split')}) is invalid: "
                f"{inline_problems(exc)}"
            ) from None
        return item  # type: ignore[return-value]

    def _check_template(self, item: I) -> None:
        fields = self.prompt_fields(item)
        missing = [f for f in template_fields(self.template) if f not in fields]
        if missing:
            raise ConfigError(
                f"task {self.name}: prompt_template uses {{{missing[0]}}} but item {item.id!r} has no "
                f"such field; available: {', '.join(sorted(fields))}"
            )

    # -- prompts -----------------------------------------------------------------------------------
    def prompt_fields(self, item: I) -> dict[str, Any]:
        """Fields available to the prompt template: the item's fields (kinds add derived ones)."""
        return item.model_dump()

    def prompt(self, item: I) -> Prompt:
        """The prompt of an item: the filled template, as a string or as chat messages with a system."""
        text = self.template.format(**self.prompt_fields(item))
        if self.params.system is not None:
            return [{"role": "system", "content": self.params.system}, {"role": "user", "content": text}]
        return text

    def items(self, split: str) -> list[I]:
        """The items of a split.

        Args:
            split: ``validation``, ``select`` or ``test``.

        Returns:
            The validated items.

        Raises:
            ValueError: For an unknown split.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use {SPLIT_NAMES}")
        return self._items[split]

    def has_split(self, split: str) -> bool:  # noqa: D102 - the data decide: a split with items
        return bool(self._items.get(split))

    def _require_items(self, split: str) -> list[I]:
        items = self.items(split)
        if not items:
            raise ConfigError(f"task {self.name} has no items in split {split}; add some to its data")
        return items

    def limits(self) -> SandboxLimits:
        """Sandbox limits of this task's runs (task params over the sandbox's defaults)."""
        p = self.params
        return self.context.sandbox.limits.replace(
            wall_s=getattr(p, "timeout_s", None), memory_mb=getattr(p, "memory_mb", None)
        )

    def max_new_tokens(self) -> int:
        """Answer length: the task's own or the run's default."""
        return getattr(self.params, "max_new_tokens", None) or self.context.max_new_tokens

    def stop(self) -> list[str]:
        """Stop strings of this task."""
        return list(getattr(self.params, "stop", None) or [])

    def map_items(self, fn: Callable[[A], R], args: Sequence[A]) -> list[R]:
        """Apply ``fn`` to each argument, in parallel when judging runs sandboxed programs."""
        if self.uses_sandbox and self.context.workers > 1 and len(args) > 1:
            with ThreadPoolExecutor(max_workers=self.context.workers) as pool:
                return list(pool.map(fn, args))
        return [fn(a) for a in args]

    # -- scoring -----------------------------------------------------------------------------------
    def evaluate(self, backend: Backend, *, split: str) -> TaskResult:  # noqa: D102
        return self.begin(backend, split=split)()

    def begin(self, backend: Backend, *, split: str) -> Callable[[], TaskResult]:
        """Do now the part of an evaluation that needs the model; return the rest as a function.

        For kinds that generate one answer per item (the default :meth:`run`), the answers are
        generated now and judging is left to the returned function, which the evaluator runs while the
        backend generates the next task's answers: sandboxed checks then overlap generation. Kinds with
        their own :meth:`run` (agents, choices) do everything now.

        Args:
            backend: The backend holding the model.
            split: ``validation``, ``select`` or ``test``.

        Returns:
            A function that finishes the evaluation and returns the task's result.
        """
        items = self._require_items(split)
        self.prepare(split)
        if type(self).run is not BuiltinTask.run:
            result = self._result(split, self.run(backend, items))
            return lambda: result
        pairs = list(zip(items, self.generate(backend, items), strict=True))
        return lambda: self._result(split, self.judge_all(pairs))

    def generate(self, backend: Backend, items: list[I]) -> list[str]:
        """The model's answers to the items (one greedy generation each)."""
        return backend.generate(
            [self.prompt(i) for i in items], max_new_tokens=self.max_new_tokens(), stop=self.stop()
        )

    @property
    def can_teach(self) -> bool:  # noqa: D102 - one-answer kinds, and kinds with their own pairs
        return type(self).run is BuiltinTask.run or type(self).teacher_pairs is not BuiltinTask.teacher_pairs

    def teacher_pairs(  # noqa: D102 - the default: one generation per item
        self, backend: Backend, *, split: str = "validation", limit: int | None = None
    ) -> list[tuple[Prompt, str]]:
        if not self.can_teach:
            return super().teacher_pairs(backend, split=split, limit=limit)
        items = self._require_items(split)[:limit]
        self.prepare(split)
        return list(zip([self.prompt(i) for i in items], self.generate(backend, items), strict=True))

    def score_predictions(self, predictions: Mapping[str, Any], *, split: str) -> TaskResult:  # noqa: D102
        items = self._require_items(split)
        self.prepare(split)
        return self._result(split, self.replay(items, predictions))

    def _result(self, split: str, results: list[ItemResult]) -> TaskResult:
        score = sum(r.score for r in results) / len(results)
        return TaskResult(task=self.name, split=split, score=min(1.0, max(0.0, score)), items=results)

    def run(self, backend: Backend, items: list[I]) -> list[ItemResult]:
        """Score the backend's model on the items (default: generate one answer each, then judge).

        Args:
            backend: The backend.
            items: The items.

        Returns:
            One result per item.
        """
        return self.judge_all(list(zip(items, self.generate(backend, items), strict=True)))

    def replay(self, items: list[I], predictions: Mapping[str, Any]) -> list[ItemResult]:
        """Score saved outputs (default: judge each item's text; missing ones score 0).

        Args:
            items: The items.
            predictions: Item id → saved output.

        Returns:
            One result per item.
        """
        results: list[ItemResult | None] = []
        texts: list[tuple[int, tuple[I, str]]] = []
        for item in items:
            output = predictions.get(item.id)
            if item.id not in predictions:
                results.append(
                    ItemResult(
                        item_id=item.id, correct=False, score=0.0, reason="no prediction for this item"
                    )
                )
            elif not isinstance(output, str):
                results.append(
                    ItemResult(
                        item_id=item.id,
                        correct=False,
                        score=0.0,
                        output=str(output),
                        reason=f"prediction is a {type(output).__name__}, expected text",
                    )
                )
            else:
                texts.append((len(results), (item, output)))
                results.append(None)
        for (index, _), result in zip(texts, self.judge_all([p for _, p in texts]), strict=True):
            results[index] = result
        return [r for r in results if r is not None]

    # -- memoised judging ----------------------------------------------------------------------------
    def answer_key(self, item: I, output: str) -> str | None:
        """The part of an answer that its verdict depends on (the program that would be executed).

        Kinds whose verdict is a function of the item and this text return it, and their verdicts are
        memoised; the default ``None`` judges every answer afresh.

        Args:
            item: The item.
            output: What the model wrote.

        Returns:
            The key text, or ``None`` for no memo.
        """
        return None

    def shared_reference(self, what: str, item: I) -> Any:
        """What preparing computed for an item, if this or an identical task computed it already.

        Args:
            what: Kind of data (``sql``, ``shell``).
            item: The item.

        Returns:
            The stored value, or ``None``.
        """
        return self.context.memos.references.get(
            (self.signature or self._memo_token, what, item.split, item.id)
        )

    def share_reference(self, what: str, item: I, value: Any) -> None:
        """Keep what preparing computed for an item for identical tasks of this process (same signature).

        Args:
            what: Kind of data.
            item: The item.
            value: The data.
        """
        self.context.memos.references.put(
            (self.signature or self._memo_token, what, item.split, item.id), value
        )

    def _memo_key(self, item: I, key: str) -> tuple[str, str, str, str]:
        return (self.signature or self._memo_token, item.split, item.id, key)

    def judge_answer(self, item: I, output: str) -> ItemResult:
        """Judge one answer through the verdict memo (see :meth:`answer_key`).

        Args:
            item: The item.
            output: What the model wrote.

        Returns:
            The item's result, with ``output`` as given.
        """
        return self.judge_all([(item, output)])[0]

    def judge_all(self, pairs: Sequence[tuple[I, str]]) -> list[ItemResult]:
        """Judge answers: remembered verdicts are reused, the others go to :meth:`judge_batch`.

        Args:
            pairs: (item, output) pairs.

        Returns:
            One result per pair, in order, each with its own ``output``.
        """
        memoize = getattr(self.params, "memoize", False)
        results: list[ItemResult | None] = [None] * len(pairs)
        todo: list[int] = []
        keys: list[tuple[str, str, str, str] | None] = [None] * len(pairs)
        for index, (item, output) in enumerate(pairs):
            key = self.answer_key(item, output) if memoize else None
            if key is not None:
                keys[index] = self._memo_key(item, key)
                known = self.context.memos.verdicts.get(keys[index])
                if known is not None:
                    same = known.output == output
                    results[index] = known if same else dataclasses.replace(known, output=output)
                    continue
            todo.append(index)
        fresh = self.judge_batch([pairs[i] for i in todo]) if todo else []
        for index, result in zip(todo, fresh, strict=True):
            results[index] = result
            key = keys[index]
            if key is not None:
                self.context.memos.verdicts.put(key, result)
        return [r for r in results if r is not None]

    def judge_batch(self, pairs: Sequence[tuple[I, str]]) -> list[ItemResult]:
        """Judge answers that no remembered verdict covers (in parallel when judging is sandboxed).

        Kinds that can check several answers in one sandboxed run override this.

        Args:
            pairs: (item, output) pairs.

        Returns:
            One result per pair, in order.
        """
        return self.map_items(lambda pair: self.judge(*pair), list(pairs))

    def remember_verdict(self, item: I, answer: str, result: ItemResult) -> None:
        """Store the verdict of a trusted answer (a reference checked while preparing).

        Args:
            item: The item.
            answer: The answer as a model would write it.
            result: Its verdict.
        """
        key = self.answer_key(item, answer) if getattr(self.params, "memoize", False) else None
        if key:  # an empty program is judged malformed, whatever is remembered
            self.context.memos.verdicts.put(self._memo_key(item, key), result)

    @abstractmethod
    def judge(self, item: I, output: str) -> ItemResult:
        """Judge one answer.

        Args:
            item: The item.
            output: What the model wrote.

        Returns:
            The item's result (with a reason when wrong).
        """


def passed(item: Item, output: str | None, **detail: Any) -> ItemResult:
    """A correct item."""
    return ItemResult(item_id=item.id, correct=True, score=1.0, output=output, detail=detail)


def failed(item: Item, output: str | None, reason: str, **detail: Any) -> ItemResult:
    """A wrong item with its reason."""
    return ItemResult(item_id=item.id, correct=False, score=0.0, output=output, reason=reason, detail=detail)
