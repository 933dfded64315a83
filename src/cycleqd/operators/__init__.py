"""Operators layer: crossover, mutation and merge methods, pure functions over tensors."""

from cycleqd.operators.crossover import (
    CrossoverPlan,
    crossover,
    crossover_tensor,
    draw_crossover,
    layer_group,
)
from cycleqd.operators.mutation import (
    DEFAULT_SKIP_PATTERNS,
    MUTATIONS,
    GaussianMutation,
    LowRank,
    Mutation,
    MutationContext,
    MutationRecord,
    NoMutation,
    SVDExpertMutation,
    SVDSelfMutation,
    build_mutation,
    is_mutable,
    mutate,
    mutate_one,
)
from cycleqd.operators.svd import ExpertSVDCache, SVDFactors, randomized_svd, svd

__all__ = [
    "DEFAULT_SKIP_PATTERNS",
    "MUTATIONS",
    "CrossoverPlan",
    "ExpertSVDCache",
    "GaussianMutation",
    "LowRank",
    "Mutation",
    "MutationContext",
    "MutationRecord",
    "NoMutation",
    "SVDExpertMutation",
    "SVDFactors",
    "SVDSelfMutation",
    "build_mutation",
    "crossover",
    "crossover_tensor",
    "draw_crossover",
    "is_mutable",
    "layer_group",
    "mutate",
    "mutate_one",
    "randomized_svd",
    "svd",
]
