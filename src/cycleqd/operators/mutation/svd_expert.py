"""``svd-expert`` (official code): τ[W] += U_q diag(r ⊙ s_q) V_qᵀ along the active expert's SVD.

U_q s_q V_qᵀ is the SVD of the active task's expert task vector for W, truncated to rank q, and
r ~ U[0, ρ) per singular value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, Field

from cycleqd.operators.mutation.base import AdditiveMutation, LowRank, MutationContext, MutationSettings
from cycleqd.operators.svd import ExpertSVDCache


class SVDExpertSettings(MutationSettings):
    """Settings of the ``svd-expert`` mutation.

    Attributes:
        rho: r ~ U[0, rho) per singular value (official code: 0.1).
        rank: Truncation rank of the expert SVDs (``null`` keeps all).
    """

    rho: float = Field(0.1, ge=0.0)
    rank: int | None = Field(None, ge=1)


@dataclass
class SVDExpertMutation(AdditiveMutation):
    """τ += U_q diag(r ⊙ s_q) V_qᵀ from the active expert's SVD, r ~ U[0, ρ) (official code).

    Args:
        caches: The SVD cache of each expert, by expert name.
        rho: Upper bound ρ of the uniform factors (official code 0.1).
    """

    kind: ClassVar[str] = "svd-expert"
    uses_expert: ClassVar[bool] = True
    Settings: ClassVar[type[BaseModel]] = SVDExpertSettings
    caches: Mapping[str, ExpertSVDCache] = field(default_factory=dict)
    rho: float = 0.1

    @classmethod
    def from_settings(cls, settings: BaseModel, *, context: MutationContext) -> SVDExpertMutation:  # noqa: D102
        assert isinstance(settings, SVDExpertSettings)
        return cls(caches=context.caches(settings.rank), rho=settings.rho)

    def expert_svds(self) -> Mapping[str, ExpertSVDCache]:  # noqa: D102
        return self.caches

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
