"""Mutations of a child's task vector (CycleQD, section 3.2 and its ablations).

Each mutation is a class with one method, :meth:`Mutation.mutate_tensor`, applied to every 2-D tensor
whose name matches none of the skip patterns; 1-D tensors (norms, biases) are never touched and come
back bit-identical. Every tensor gets its own generator derived from (child seed, tensor name), so the
result does not depend on the order tensors are visited (streaming) and is reproducible.

- ``svd-expert`` (official code): τ[W] += U_q diag(r ⊙ s_q) V_qᵀ, where U_q s_q V_qᵀ is the SVD of the
  active task's expert task vector for W, truncated to rank q, and r ~ U[0, ρ) per singular value.
- ``svd-self`` (paper's formulation): τ[W] = U diag(s ⊙ w) Vᵀ from the SVD of the child's own τ[W], with
  w ~ U[low, high) per singular value. Computed as τ + U diag(s ⊙ (w − 1)) Vᵀ, which is the same for a
  full SVD and keeps the unperturbed remainder when a randomized low-rank SVD is used for large matrices.
- ``gaussian`` (ablation): τ[W] += N(0, σ²) per entry (official code: σ = 3e-4).
- ``none``: the identity.

A new mutation is one class here plus a line in :data:`MUTATIONS`.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from cycleqd.operators.random import make_generator
from cycleqd.operators.svd import ExpertSVDCache, randomized_svd, svd

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


class AdditiveMutation(Mutation):
    """A mutation τ' = τ + δ where δ does not depend on τ."""

    additive: ClassVar[bool] = True

    def mutate_tensor(self, name, tau, *, generator, expert=None):  # noqa: D102
        d, factors = self.delta(name, tau.shape, generator=generator, expert=expert, device=tau.device)
        return tau + (d.dense() if isinstance(d, LowRank) else d), factors


@dataclass
class NoMutation(Mutation):
    """The identity."""

    kind: ClassVar[str] = "none"

    def mutate_tensor(self, name, tau, *, generator, expert=None):  # noqa: D102
        return tau, None


@dataclass
class GaussianMutation(AdditiveMutation):
    """τ += N(0, σ²) per entry (ablation; official code σ = 3e-4).

    Args:
        sigma: Standard deviation σ.
    """

    kind: ClassVar[str] = "gaussian"
    sigma: float = 3e-4

    def delta(self, name, shape, *, generator, expert=None, device="cpu"):  # noqa: D102
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return noise.mul_(self.sigma).to(device), None

    def params(self):  # noqa: D102
        return {"sigma": self.sigma}


@dataclass
class SVDExpertMutation(AdditiveMutation):
    """τ += U_q diag(r ⊙ s_q) V_qᵀ from the active expert's SVD, r ~ U[0, ρ) (official code).

    Args:
        caches: The SVD cache of each expert, by expert name.
        rho: Upper bound ρ of the uniform factors (official code 0.1).
    """

    kind: ClassVar[str] = "svd-expert"
    caches: Mapping[str, ExpertSVDCache] = field(default_factory=dict)
    rho: float = 0.1

    def delta(self, name, shape, *, generator, expert=None, device="cpu"):  # noqa: D102
        if expert is None or expert not in self.caches:
            raise ValueError(
                f"svd-expert mutation needs the active expert's SVD cache; got expert={expert!r}, "
                f"caches for {sorted(self.caches)}"
            )
        f = self.caches[expert].get(name)
        r = torch.rand(f.S.shape, generator=generator, dtype=torch.float32) * self.rho
        U, s, Vh = f.U.to(device), (r * f.S).to(device), f.Vh.to(device)
        return LowRank(U * s.unsqueeze(0), Vh), r

    def params(self):  # noqa: D102
        ranks = {c.rank for c in self.caches.values()}
        return {"rho": self.rho, "rank": ranks.pop() if len(ranks) == 1 else sorted(map(str, ranks))}


@dataclass
class SVDSelfMutation(Mutation):
    """τ = U diag(s ⊙ w) Vᵀ from the child's own SVD, w ~ U[low, high) (paper's formulation).

    Args:
        low: Lower bound of the singular-value factors.
        high: Upper bound of the singular-value factors.
        randomized_above: Use a randomized SVD of rank ``rank`` for matrices with more elements than
            this (``None``: always exact).
        rank: Rank of the randomized SVD.
    """

    kind: ClassVar[str] = "svd-self"
    low: float = 0.9
    high: float = 1.1
    randomized_above: int | None = None
    rank: int = 256

    def mutate_tensor(self, name, tau, *, generator, expert=None):  # noqa: D102
        if self.randomized_above is not None and tau.numel() > self.randomized_above:
            f = randomized_svd(tau, rank=self.rank, generator=generator)
        else:
            f = svd(tau)
        w = (
            torch.rand(f.S.shape, generator=generator, dtype=torch.float32) * (self.high - self.low)
            + self.low
        )
        return tau + f.reconstruct(w.to(f.S.device) - 1.0), w

    def params(self):  # noqa: D102
        return {
            "low": self.low,
            "high": self.high,
            "randomized_above": self.randomized_above,
            "rank": self.rank,
        }


MUTATIONS: dict[str, type[Mutation]] = {
    cls.kind: cls for cls in (SVDExpertMutation, SVDSelfMutation, GaussianMutation, NoMutation)
}


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
    if isinstance(mutation, NoMutation) or not is_mutable(name, tau.ndim, skip_patterns):
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
        expert=expert if isinstance(mutation, SVDExpertMutation) else None,
    )
    return out, record
