"""Where a merged model lies relative to the experts: its coordinates on their task vectors.

A model's task vector τ = θ − θ0 is projected by least squares onto the span of the experts' task
vectors τ_1..τ_K: τ = Σ_k a_k τ_k + r with r orthogonal to every τ_k. The coefficients say how much
of each expert the model holds (task arithmetic with λ has a_k = λ; a child of the paper's crossover
without mutation has Σ a_k = 1), and ‖r‖ / ‖τ‖ says how far it left the plane the experts span.
The inner products are summed tensor by tensor in float64, so memory stays at one tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PlaneCoordinates:
    """A model's position relative to the experts' task vectors.

    Attributes:
        coefficients: a_k, one per expert, in the experts' order.
        off_plane: ‖r‖ / ‖τ‖, the share of the task vector's norm outside the experts' span (0 for a
            model on it; 0 too for the base, whose τ is 0).
    """

    coefficients: list[float]
    off_plane: float

    @property
    def total(self) -> float:
        """Σ_k a_k (1 on the paper's crossover plane, K λ for task arithmetic with λ)."""
        return float(sum(self.coefficients))


def plane_coordinates(
    base: Mapping[str, torch.Tensor],
    experts: Sequence[Mapping[str, torch.Tensor]],
    model: Mapping[str, torch.Tensor],
) -> PlaneCoordinates:
    """The least-squares coordinates of ``model``'s task vector on the experts' task vectors.

    Args:
        base: θ0.
        experts: The experts θ_k (same tensor names as the base).
        model: The model to place.

    Returns:
        Its coordinates.

    Raises:
        ValueError: Without experts, or when their task vectors are linearly dependent.
    """
    k = len(experts)
    if k == 0:
        raise ValueError("plane_coordinates needs at least one expert")
    gram = torch.zeros((k, k), dtype=torch.float64)
    rhs = torch.zeros(k, dtype=torch.float64)
    norm2 = 0.0
    for name in base:
        b = base[name]
        if not b.dtype.is_floating_point:
            continue
        b64 = b.double().flatten()
        taus = torch.stack([e[name].double().flatten() - b64 for e in experts])
        tau = model[name].double().flatten() - b64
        gram += taus @ taus.T
        rhs += taus @ tau
        norm2 += float(tau @ tau)
    if torch.linalg.matrix_rank(gram) < k:
        raise ValueError("the experts' task vectors are linearly dependent; their plane is not defined")
    coefficients = torch.linalg.solve(gram, rhs)
    # ‖r‖² = ‖τ‖² − aᵀ G a for the least-squares a (Pythagoras).
    residual2 = max(norm2 - float(coefficients @ gram @ coefficients), 0.0)
    off = (residual2 / norm2) ** 0.5 if norm2 > 0 else 0.0
    return PlaneCoordinates(coefficients=[float(c) for c in coefficients], off_plane=off)
