"""Task arithmetic: a scaled, weighted sum of task vectors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cycleqd.operators.merge.common import check_inputs
from cycleqd.operators.merge.linear import _normalised, linear


def task_arithmetic(
    taus: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    scale: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023).

        τ = λ Σ_i w_i τ_i            (÷ Σ_i w_i with ``normalize``)

    and the merged model is θ0 + τ. ``scale`` is the paper's λ (mergekit's ``lambda``); the per-model
    weights are mergekit's ``weight``. Without normalisation the default is mergekit's.

    Args:
        taus: Task vectors of one tensor, one per model.
        weights: One weight per model.
        scale: λ, multiplies the merged task vector.
        normalize: Divide by the sum of the weights.

    Returns:
        The merged task vector in float32.

    Raises:
        ValueError: On mismatched inputs, or when normalised weights sum to 0.
    """
    check_inputs("task_arithmetic", taus, weights=weights)
    out = linear(taus, weights=weights, normalize=normalize)
    if scale != 1.0:
        out.mul_(scale)
    return out


def task_arithmetic_coefficients(
    *, weights: Sequence[float], scale: float = 1.0, normalize: bool = False
) -> tuple[float, list[float]]:
    """The weight-space form of :func:`task_arithmetic`: θ = c0 θ0 + Σ_i c_i θ_i.

    With c_i = λ w_i (÷ Σ_j w_j with ``normalize``) and c0 = 1 − Σ_i c_i, this is θ0 + λ Σ_i w_i τ_i.
    :func:`~cycleqd.operators.merge.merge_models` uses it to combine weights in one pass per model;
    the result equals θ0 + :func:`task_arithmetic` up to float rounding.

    Args:
        weights: One weight per model.
        scale: λ.
        normalize: Divide by the sum of the weights.

    Returns:
        (c0, [c_i]).

    Raises:
        ValueError: When normalised weights sum to 0.
    """
    c = [scale * w for w in _normalised(weights, normalize)]
    return 1.0 - sum(c), c
