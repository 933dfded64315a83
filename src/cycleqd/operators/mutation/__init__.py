"""Mutations of a child's task vector (CycleQD, section 3.2 and its ablations).

- ``svd-expert`` (official code): along the active expert's singular vectors (:mod:`.svd_expert`);
- ``svd-self`` (paper's formulation): the child's own singular values rescaled (:mod:`.svd_self`);
- ``gaussian`` (ablation): entry-wise noise (:mod:`.gaussian`);
- ``none``: the identity (:mod:`.identity`).

A new mutation is one module (a :class:`~.base.Mutation` subclass with its ``Settings``) plus one
line in :data:`~.registry.MUTATIONS`.
"""

from cycleqd.operators.mutation.base import (
    DEFAULT_SKIP_PATTERNS,
    AdditiveMutation,
    FactorSummary,
    LowRank,
    Mutation,
    MutationContext,
    MutationRecord,
    MutationSettings,
    NoSettings,
    is_mutable,
    mutate,
    mutate_one,
)
from cycleqd.operators.mutation.gaussian import GaussianMutation
from cycleqd.operators.mutation.identity import NoMutation
from cycleqd.operators.mutation.registry import MUTATIONS, build_mutation
from cycleqd.operators.mutation.svd_expert import SVDExpertMutation
from cycleqd.operators.mutation.svd_self import SVDSelfMutation

__all__ = [
    "DEFAULT_SKIP_PATTERNS",
    "MUTATIONS",
    "AdditiveMutation",
    "FactorSummary",
    "GaussianMutation",
    "LowRank",
    "Mutation",
    "MutationContext",
    "MutationRecord",
    "MutationSettings",
    "NoMutation",
    "NoSettings",
    "SVDExpertMutation",
    "SVDSelfMutation",
    "build_mutation",
    "is_mutable",
    "mutate",
    "mutate_one",
]
