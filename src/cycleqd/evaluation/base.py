"""The contract between the engine and evaluation: tasks, their results, and model backends.

The engine hands the evaluation layer a model's weights; a :class:`Backend` makes them usable (for
language models it copies them into one resident model and answers ``generate`` and
``loglikelihood``; for other models it exposes the tensors), and each :class:`Task` scores the
backend's current model on a split.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypedDict

import torch

SPLITS = ("validation", "select", "test")
"""The splits a task can have: ``validation`` drives evolution, ``select`` (optional, disjoint from
both others) chooses the run's recommended model, ``test`` is only for reporting."""

SPLIT_NAMES = "validation, select or test"


class Message(TypedDict):
    """One chat message."""

    role: str
    content: str


Prompt = str | list[Message]


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one item of a task.

    Attributes:
        item_id: The item's id.
        correct: Whether the answer was judged right.
        score: The item's score in [0, 1] (1.0/0.0 for pass/fail tasks).
        output: What the model produced (for agents, the whole transcript of its turns).
        reason: Why it failed (``None`` when correct).
        detail: Extra data for audits (expected answer, executor output, rounds used, ...).
    """

    item_id: str
    correct: bool
    score: float
    output: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskResult:
    """A task's score on one split, with the per-item results.

    Attributes:
        task: Task name.
        split: ``validation``, ``select`` or ``test``.
        score: Score in [0, 1] (usually the mean of the items' scores).
        items: Per-item results (may be empty for analytic tasks).
    """

    task: str
    split: str
    score: float
    items: list[ItemResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.score, bool) or not isinstance(self.score, numbers.Real) or math.isnan(self.score):
            raise ValueError(f"task {self.task} returned a score that is not a number: {self.score!r}")
        object.__setattr__(self, "score", float(self.score))  # numpy scalars become plain floats
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"task {self.task} returned a score outside [0, 1]: {self.score!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        """Inverse of :meth:`to_dict`."""
        items = [ItemResult(**i) for i in data.get("items", [])]
        return cls(task=data["task"], split=data["split"], score=float(data["score"]), items=items)


class Backend(ABC):
    """Holds one model at a time and answers the queries tasks make of it."""

    @abstractmethod
    def load(self, weights: Mapping[str, torch.Tensor], *, fingerprint: str) -> None:
        """Make ``weights`` the current model (copied into the resident model, not rebuilt).

        Args:
            weights: Full weights of the model (names of the base model).
            fingerprint: Identity of these weights, for caches.
        """

    @property
    @abstractmethod
    def fingerprint(self) -> str | None:
        """Fingerprint of the current model, ``None`` before the first :meth:`load`."""

    @property
    def signature(self) -> str:
        """Identity of the settings that change what the backend answers (part of result-cache keys).

        Backends whose answers depend on settings (chat template, dtype, ...) override this; the
        default ``""`` means "answers depend on the weights only".
        """
        return ""

    @property
    def weights(self) -> Mapping[str, torch.Tensor]:
        """The current model's weights, for tasks that compute on tensors directly."""
        raise NotImplementedError(f"{type(self).__name__} does not expose weights")

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
    ) -> list[str]:
        """Greedy completions of the current model, cut before the first stop string.

        Args:
            prompts: Plain strings or chat messages.
            max_new_tokens: Most tokens generated per prompt.
            stop: Strings that end a completion (not included in it).

        Returns:
            One completion per prompt.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot generate text")

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        """Sum of the log-probabilities of each continuation given its context.

        Args:
            requests: Pairs of (context, continuation).

        Returns:
            One log-likelihood per pair.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot score continuations")

    def close(self) -> None:  # noqa: B027 - optional hook: backends holding nothing need no close
        """Free what the backend holds (its resident model, an inference engine and its GPU memory).

        The backend answers no further queries; closing twice does nothing.
        """


class Task(ABC):
    """A skill that scores the backend's current model on a split.

    Subclasses used from a config as ``module:Class`` are built as ``Class(name=..., **params)``
    (built-in kinds also get ``data``, their items by split).
    """

    #: Whether the task needs a text-generating backend (``generate``/``loglikelihood``).
    needs_text: ClassVar[bool] = True

    #: The splits a task of this class can score; a custom task that can also score ``select`` lists
    #: it here (built-in kinds have the splits their data has items in).
    offered_splits: ClassVar[tuple[str, ...]] = ("validation", "test")

    #: Identity of the task's settings and data, part of result-cache keys; builders set it (for
    #: built-in kinds, a hash of the params and the data files). ``""`` means unknown.
    signature: str = ""

    def __init__(self, *, name: str) -> None:
        self.name = name

    def has_split(self, split: str) -> bool:
        """Whether the task can score models on a split (the engine asks before using ``select``).

        Args:
            split: A split name.

        Returns:
            For this base class, whether the split is in :attr:`offered_splits`.
        """
        return split in self.offered_splits

    def prepare(self, split: str) -> None:  # noqa: B027 - optional hook, deliberately empty
        """One-off work on a split before any model is scored (reference answers, data checks).

        Called before the first model is loaded, so that bad data is reported before long work
        starts. Must be idempotent. The default does nothing.

        Args:
            split: ``validation``, ``select`` or ``test``.

        Raises:
            CycleQDError: When the task's data cannot be used.
        """

    def score_predictions(self, predictions: Mapping[str, Any], *, split: str) -> TaskResult:
        """Score saved model outputs without a model, through the same checks as :meth:`evaluate`.

        Args:
            predictions: Item id → what the model produced (text; agent tasks take the list of the
                model's turns). Items without a prediction score 0.
            split: ``validation``, ``select`` or ``test``.

        Returns:
            The task's result on that split.

        Raises:
            NotImplementedError: When the task cannot score saved outputs.
        """
        raise NotImplementedError(f"task {self.name} ({type(self).__name__}) cannot score saved predictions")

    @property
    def can_teach(self) -> bool:
        """Whether :meth:`teacher_pairs` is implemented (what ``init.distill`` needs of every task)."""
        return type(self).teacher_pairs is not Task.teacher_pairs

    def teacher_pairs(
        self, backend: Backend, *, split: str = "validation", limit: int | None = None
    ) -> list[tuple[Prompt, str]]:
        """What the backend's model replies in each context it meets on a split's items.

        A learned merge (``init.distill``) is trained to reproduce each expert's replies on its own
        task: every (context, reply) pair here is one target, the context conditioning, the reply
        scored. One-answer kinds give (prompt, answer); agents give every turn with the conversation
        before it; multiple choice gives the prompt and the option the model prefers.

        Args:
            backend: The backend holding the teacher.
            split: The split whose items are played.
            limit: Use the split's first ``limit`` items only (``None``: all).

        Returns:
            (context, reply) pairs, in the order the replies were made (item order; agents: round
            by round).

        Raises:
            NotImplementedError: When the task cannot say what its model replies (see :attr:`can_teach`).
        """
        raise NotImplementedError(
            f"task {self.name} ({type(self).__name__}) does not implement teacher_pairs, "
            "which init.distill needs"
        )

    @abstractmethod
    def evaluate(self, backend: Backend, *, split: str) -> TaskResult:
        """Score the backend's current model.

        Args:
            backend: The backend holding the model.
            split: ``validation``, ``select`` or ``test``.

        Returns:
            The task's result on that split.
        """


class InMemoryBackend(Backend):
    """A backend whose model is the weights it was given (held as they are, not copied)."""

    def __init__(self) -> None:
        self._weights: Mapping[str, torch.Tensor] | None = None
        self._fingerprint: str | None = None

    def load(self, weights: Mapping[str, torch.Tensor], *, fingerprint: str) -> None:  # noqa: D102
        self._weights = weights
        self._fingerprint = fingerprint

    @property
    def fingerprint(self) -> str | None:  # noqa: D102
        return self._fingerprint

    @property
    def weights(self) -> Mapping[str, torch.Tensor]:  # noqa: D102
        if self._weights is None:
            raise RuntimeError("no model loaded; call load() first")
        return self._weights


class WeightsBackend(InMemoryBackend):
    """A backend that only exposes the weights: for models that are not language models."""
