"""Linear merge: a weighted sum of task vectors."""

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
