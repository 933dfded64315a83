"""``gaussian`` (ablation): τ[W] += N(0, σ²) per entry (official code: σ = 3e-4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, Field

from cycleqd.operators.mutation.base import AdditiveMutation, MutationContext, MutationSettings


class GaussianSettings(MutationSettings):
    """Settings of the ``gaussian`` mutation.

    Attributes:
        sigma: Standard deviation σ of the noise added to each entry.
    """

    sigma: float = Field(3e-4, ge=0.0)


@dataclass
class GaussianMutation(AdditiveMutation):
    """τ += N(0, σ²) per entry (ablation; official code σ = 3e-4).

    Args:
        sigma: Standard deviation σ.
    """

    kind: ClassVar[str] = "gaussian"
    Settings: ClassVar[type[BaseModel]] = GaussianSettings
    sigma: float = 3e-4

    @classmethod
    def from_settings(cls, settings: BaseModel, *, context: MutationContext) -> GaussianMutation:  # noqa: D102
        assert isinstance(settings, GaussianSettings)
        return cls(sigma=settings.sigma)

    def delta(self, name, shape, *, generator, expert=None, device="cpu"):  # noqa: D102
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return noise.mul_(self.sigma).to(device), None

    def params(self):  # noqa: D102
        return {"sigma": self.sigma}
