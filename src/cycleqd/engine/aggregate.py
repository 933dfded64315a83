"""The end of a run: merge the best elite of each archive into one model (DESIGN.md section 1).

θ_agg = θ0 + Σ_k softmax(f/T)_k τ_{e_k}, where e_k is the elite with the best score f_k on task k.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch

from cycleqd.operators.merge import merge_models


def softmax_weights(scores: Sequence[float], *, temperature: float = 1.0) -> list[float]:
    """softmax(f / T), computed stably.

    Args:
        scores: The best score f_k of each archive.
        temperature: T > 0.

    Returns:
        Weights summing to 1.
    """
    z = [s / temperature for s in scores]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


def aggregate_tensors(
    base: Mapping[str, torch.Tensor],
    elites: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream θ0 + Σ_k w_k τ_{e_k} tensor by tensor (task arithmetic with per-elite weights).

    Args:
        base: θ0.
        elites: The elites' weights.
        weights: One weight per elite (summing to 1 for the paper's aggregation).

    Yields:
        (name, tensor) pairs in float32.
    """
    yield from merge_models(
        base,
        elites,
        method="task_arithmetic",
        weights=list(weights),
        out_dtype=torch.float32,
        release_inputs=True,
    )
