"""Linear merges: a weighted sum of task vectors, and mergekit's ``linear`` on the weights themselves."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def linear(
    taus: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    normalize: bool = True,
) -> torch.Tensor:
    """Weighted sum of task vectors: τ = Σ_i w_i τ_i / Σ_i w_i.

    With ``normalize`` the weights are divided by their sum, so the merged model
    θ0 + τ equals Σ_i w_i θ_i / Σ_i w_i (the model soup of Wortsman et al., ICML 2022).

    Args:
        taus: Task vectors of one tensor, one per model, same shape.
        weights: One weight per model.
        normalize: Divide by the sum of the weights.

    Returns:
        The merged task vector in float32.

    Raises:
        ValueError: When the numbers of weights and tensors differ, or normalised weights sum to 0.
    """
    if len(taus) != len(weights):
        raise ValueError(f"linear merge got {len(taus)} tensors but {len(weights)} weights")
    total = float(sum(weights))
    if normalize:
        if abs(total) < 1e-12:
            raise ValueError("linear merge weights sum to 0; give weights with a non-zero sum")
        weights = [w / total for w in weights]
    out = taus[0].float() * weights[0]
    for t, w in zip(taus[1:], weights[1:], strict=True):
        out.add_(t.float(), alpha=w)
    return out


def linear_soup(
    taus: Sequence[torch.Tensor],
    *,
    base: torch.Tensor,
    weights: Sequence[float],
    normalize: bool = True,
) -> torch.Tensor:
    """The ``linear`` method of mergekit, which averages the models' weights rather than task vectors.

    The merged weights are θ = Σ_i w_i θ_i / Σ_i w_i (model soups, Wortsman et al., ICML 2022), or
    θ = Σ_i w_i θ_i without ``normalize``. As a task vector (θ_i = θ0 + τ_i):

        τ = Σ_i w_i τ_i / Σ_i w_i                      with normalize,
        τ = Σ_i w_i τ_i + (Σ_i w_i − 1) θ0             without,

    so the two forms agree with :func:`linear` exactly when the weights sum to 1. The base θ0 matters
    only for unnormalised weights that do not sum to 1 (then the base itself is scaled).

    Args:
        taus: Task vectors of one tensor, one per model.
        base: The base tensor θ0 (float32).
        weights: One weight per model.
        normalize: Divide by the sum of the weights.

    Returns:
        The merged task vector in float32.

    Raises:
        ValueError: As :func:`linear`.
    """
    out = linear(taus, weights=weights, normalize=normalize)
    excess = float(sum(weights)) - 1.0
    if not normalize and excess != 0.0:
        out.add_(base.float(), alpha=excess)
    return out


def linear_soup_coefficients(
    *, weights: Sequence[float], normalize: bool = True
) -> tuple[float, list[float]]:
    """The weight-space form of :func:`linear_soup`: θ = c0 θ0 + Σ_i c_i θ_i.

    For the soup c0 = 0 and c_i = w_i / Σ_j w_j (c_i = w_i without ``normalize``), so the base is not
    even read. :func:`~cycleqd.operators.merge.merge_models` uses this to combine weights in one pass
    per model instead of forming task vectors; the result equals θ0 + :func:`linear_soup` up to float
    rounding.

    Args:
        weights: One weight per model.
        normalize: Divide by the sum of the weights.

    Returns:
        (c0, [c_i]).

    Raises:
        ValueError: When normalised weights sum to 0.
    """
    return 0.0, _normalised(weights, normalize)


def _normalised(weights: Sequence[float], normalize: bool) -> list[float]:
    weights = [float(w) for w in weights]
    if not normalize:
        return weights
    total = sum(weights)
    if abs(total) < 1e-12:
        raise ValueError("linear merge weights sum to 0; give weights with a non-zero sum")
    return [w / total for w in weights]
