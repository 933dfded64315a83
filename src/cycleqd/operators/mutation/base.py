"""What every mutation shares: the interface, the records and the functions that apply one.

Each mutation is a class with one method, :meth:`Mutation.mutate_tensor`, applied to every 2-D tensor
whose name matches none of the skip patterns; 1-D tensors (norms, biases) are never touched and come
back bit-identical. Every tensor gets its own generator derived from (child seed, tensor name), so the
result does not depend on the order tensors are visited (streaming) and is reproducible.

A mutation declares what the engine needs to know about it, so that nothing outside its own file
tests its class: its config settings (:attr:`Mutation.Settings`, a pydantic model built into the run
config's ``mutation`` section), how it is built from them (:meth:`Mutation.from_settings`), whether it
is additive (:attr:`Mutation.additive`), whether it changes nothing (:attr:`Mutation.identity`),
whether it reads the active task's expert (:attr:`Mutation.uses_expert`) and which expert SVDs must
exist before a child is built (:meth:`Mutation.expert_svds`).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from cycleqd.operators.random import make_generator
from cycleqd.operators.svd import ExpertSVDCache

DEFAULT_SKIP_PATTERNS: tuple[str, ...] = ("norm",)


def is_mutable(name: str, tensor_ndim: int, skip_patterns: Sequence[str] = DEFAULT_SKIP_PATTERNS) -> bool:
    """Whether a tensor is mutated: 2-D and matching none of the skip patterns.

    Args:
        name: Tensor name.
        tensor_ndim: Its number of dimensions.
        skip_patterns: Regular expressions searched in the name.

    Returns:
        True when the mutation applies.
    """
    return tensor_ndim == 2 and not any(re.search(p, name) for p in skip_patterns)


@dataclass(frozen=True)
class LowRank:
    """A matrix kept as two factors, A @ B (A: m × k, B: k × n), so it can be added without forming it.

    Attributes:
        a: Left factor.
        b: Right factor.
    """

    a: torch.Tensor
    b: torch.Tensor

    def dense(self) -> torch.Tensor:
        """The m × n matrix A @ B."""
        return self.a @ self.b


class Mutation(ABC):
    """A perturbation of one task-vector matrix.

    Additive mutations (``additive = True``) add a term that does not depend on τ itself; they
    implement :meth:`delta`, and a child can then be built as Σ w_i θ_i + δ without forming τ.
    """

    kind: ClassVar[str]
    additive: ClassVar[bool] = False
    #: Changes nothing (its tensors are counted as skipped, and a child needs no task vector).
    identity: ClassVar[bool] = False
    #: Reads the active task's expert (the job's active task is passed as ``expert``).
    uses_expert: ClassVar[bool] = False
    #: The config settings it takes (fields of the run config's ``mutation`` section).
    Settings: ClassVar[type[BaseModel]]

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: BaseModel, *, context: MutationContext) -> Mutation:
        """The mutation a config's settings ask for.

        Args:
            settings: A validated instance of :attr:`Settings`.
            context: What the run can provide (the expert SVD caches).

        Returns:
            The mutation.
        """

    def expert_svds(self) -> Mapping[str, ExpertSVDCache]:
        """The expert SVD caches that must be complete before a child is built (task → cache)."""
        return {}

    @abstractmethod
    def mutate_tensor(
        self,
        name: str,
        tau: torch.Tensor,
        *,
        generator: torch.Generator,
        expert: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mutate one 2-D task-vector tensor.

        Args:
            name: Tensor name.
            tau: The child's task vector for this tensor (float32).
            generator: The tensor's own generator.
            expert: Name of the active task's expert (used by ``svd-expert``).

        Returns:
            The mutated tensor and the drawn factors (or ``None``) for the record.
        """

    def delta(
        self,
        name: str,
        shape: torch.Size,
        *,
        generator: torch.Generator,
        expert: str | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor | LowRank, torch.Tensor | None]:
        """The term an additive mutation adds to one tensor (τ' = τ + δ).

        Args:
            name: Tensor name.
            shape: Its shape.
            generator: The tensor's own generator.
            expert: Name of the active task's expert (used by ``svd-expert``).
            device: Where to build δ.

        Returns:
            δ (float32, dense or as :class:`LowRank` factors) and the drawn factors (or ``None``).
        """
        raise NotImplementedError(f"{self.kind} mutation is not additive")

    def params(self) -> dict[str, object]:
        """The mutation's parameters, for the record."""
        return {}


class MutationSettings(BaseModel):
    """Base of every mutation's settings: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class NoSettings(MutationSettings):
    """A mutation that takes no settings."""


@dataclass(frozen=True)
class MutationContext:
    """What a run provides to build mutations.

    Attributes:
        expert_svds: Rank → the SVD cache of each task's expert task vector at that rank (``None``
            keeps every singular value); the caches may not be built yet.
    """

    expert_svds: Callable[[int | None], dict[str, ExpertSVDCache]] | None = None

    def caches(self, rank: int | None) -> dict[str, ExpertSVDCache]:
        """The experts' SVD caches at ``rank``.

        Raises:
            ValueError: When the run provides none.
        """
        if self.expert_svds is None:
            raise ValueError("this mutation needs the experts' SVD caches, which this context lacks")
        return self.expert_svds(rank)


class AdditiveMutation(Mutation):
    """A mutation τ' = τ + δ where δ does not depend on τ."""

    additive: ClassVar[bool] = True

    def mutate_tensor(self, name, tau, *, generator, expert=None):  # noqa: D102
        d, factors = self.delta(name, tau.shape, generator=generator, expert=expert, device=tau.device)
        return tau + (d.dense() if isinstance(d, LowRank) else d), factors


@dataclass
class FactorSummary:
    """Running summary of drawn factors (count, mean, min, max) over the tensors of one child."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, factors: torch.Tensor) -> None:
        """Fold in the factors drawn for one tensor."""
        if factors.numel() == 0:
            return
        self.count += factors.numel()
        self.total += float(factors.double().sum())
        self.low = min(self.low, float(factors.min()))
        self.high = max(self.high, float(factors.max()))

    def to_record(self) -> dict[str, float | int]:
        """JSON-ready summary."""
        if not self.count:
            return {"count": 0}
        return {"count": self.count, "mean": self.total / self.count, "min": self.low, "max": self.high}


@dataclass(frozen=True)
class MutationRecord:
    """What a mutation did to one child.

    Attributes:
        kind: Mutation kind.
        params: Its parameters.
        mutated: Number of tensors mutated.
        skipped: Number of tensors left alone.
        factors: Summary of the drawn factors.
        expert: The expert whose SVD was used (``svd-expert``).
    """

    kind: str
    params: dict[str, object]
    mutated: int
    skipped: int
    factors: dict[str, float | int]
    expert: str | None = None

    def to_record(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "params": self.params,
            "mutated": self.mutated,
            "skipped": self.skipped,
            "factors": self.factors,
            "expert": self.expert,
        }


def mutate_one(
    name: str,
    tau: torch.Tensor,
    mutation: Mutation,
    *,
    seed: int,
    skip_patterns: Sequence[str] = DEFAULT_SKIP_PATTERNS,
    expert: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """Mutate one tensor if it is mutable (the streaming form of :func:`mutate`).

    Args:
        name: Tensor name.
        tau: Its task vector.
        mutation: The mutation.
        seed: The child's mutation seed; the tensor's generator derives from (seed, name).
        skip_patterns: Names matching any of these are left alone.
        expert: Active expert (``svd-expert``).

    Returns:
        The (possibly) mutated tensor, the drawn factors or ``None``, and whether it was mutated.
    """
    if mutation.identity or not is_mutable(name, tau.ndim, skip_patterns):
        return tau, None, False
    out, factors = mutation.mutate_tensor(name, tau, generator=make_generator(seed, name), expert=expert)
    return out, factors, True


def mutate(
    tau: Mapping[str, torch.Tensor],
    mutation: Mutation,
    *,
    seed: int,
    skip_patterns: Sequence[str] = DEFAULT_SKIP_PATTERNS,
    expert: str | None = None,
) -> tuple[dict[str, torch.Tensor], MutationRecord]:
    """Mutate a whole task vector.

    Args:
        tau: The child's task vector.
        mutation: The mutation.
        seed: The child's mutation seed.
        skip_patterns: Regular expressions of tensor names to leave alone.
        expert: Active expert (``svd-expert``).

    Returns:
        The mutated task vector (skipped tensors are the very same objects) and the record.
    """
    out = {}
    summary = FactorSummary()
    mutated = skipped = 0
    for name in tau:
        t, factors, changed = mutate_one(
            name, tau[name], mutation, seed=seed, skip_patterns=skip_patterns, expert=expert
        )
        out[name] = t
        mutated += changed
        skipped += not changed
        if factors is not None:
            summary.add(factors)
    record = MutationRecord(
        kind=mutation.kind,
        params=mutation.params(),
        mutated=mutated,
        skipped=skipped,
        factors=summary.to_record(),
        expert=expert if mutation.uses_expert else None,
    )
    return out, record
