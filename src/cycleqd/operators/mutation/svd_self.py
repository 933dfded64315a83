"""``svd-self`` (paper's formulation): τ[W] = U diag(s ⊙ w) Vᵀ from the child's own SVD.

w ~ U[low, high) per singular value. Computed as τ + U diag(s ⊙ (w − 1)) Vᵀ, which is the same for a
full SVD and keeps the unperturbed remainder when a randomized low-rank SVD is used for large matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, Field, model_validator

from cycleqd.operators.mutation.base import Mutation, MutationContext, MutationSettings
from cycleqd.operators.svd import randomized_svd, svd


class SVDSelfSettings(MutationSettings):
    """Settings of the ``svd-self`` mutation.

    Attributes:
        low: Lower bound of the singular-value factors.
        high: Upper bound.
        randomized_above: Randomized SVD for matrices with more elements than this (``null``: exact).
        randomized_rank: Rank of the randomized SVD.
    """

    low: float = 0.9
    high: float = 1.1
    randomized_above: int | None = Field(None, ge=1)
    randomized_rank: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> SVDSelfSettings:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


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
    Settings: ClassVar[type[BaseModel]] = SVDSelfSettings
    low: float = 0.9
    high: float = 1.1
    randomized_above: int | None = None
    rank: int = 256

    @classmethod
    def from_settings(cls, settings: BaseModel, *, context: MutationContext) -> SVDSelfMutation:  # noqa: D102
        assert isinstance(settings, SVDSelfSettings)
        return cls(
            low=settings.low,
            high=settings.high,
            randomized_above=settings.randomized_above,
            rank=settings.randomized_rank,
        )

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
