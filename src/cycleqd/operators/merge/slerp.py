"""Spherical linear interpolation between the base and one other model (mergekit's ``slerp``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DOT_THRESHOLD = 0.9995
_EPS = 1e-8


def slerp(
    taus: Sequence[torch.Tensor],
    *,
    base: torch.Tensor,
    t: float,
) -> torch.Tensor:
    """Spherical interpolation of two models' weights (Shoemake, SIGGRAPH 1985; as in mergekit).

    The two models are the base v0 = θ0 and v1 = θ0 + τ (the one task vector given). With
    Ω = arccos(⟨v0/‖v0‖, v1/‖v1‖⟩) over the whole tensor,

        slerp(t) = sin((1 − t) Ω) / sin Ω · v0 + sin(t Ω) / sin Ω · v1,

    falling back to (1 − t) v0 + t v1 when |cos Ω| > 0.9995 (nearly colinear). A norm below 1e-8 is
    taken as 1. The merged weights are slerp(t), so t = 0 gives the base and t = 1 the other model; the
    returned task vector is slerp(t) − θ0 = (s0 + s1 − 1) θ0 + s1 τ.

    Args:
        taus: Exactly one task vector (the model that is not the base).
        base: The base weights θ0 (float32).
        t: Interpolation factor, usually in [0, 1].

    Returns:
        The merged task vector (float32).

    Raises:
        ValueError: Unless exactly one task vector is given.
    """
    if len(taus) != 1:
        raise ValueError(
            f"slerp interpolates between the base and exactly one other model, got {len(taus)} models "
            "besides the base"
        )
    tau = taus[0].float()
    v0 = base.float()
    if tau.shape != v0.shape:
        raise ValueError(f"slerp got a task vector of shape {list(tau.shape)} for a base of {list(v0.shape)}")
    v1 = v0 + tau
    n0 = float(torch.linalg.vector_norm(v0))
    n1 = float(torch.linalg.vector_norm(v1))
    n0 = n0 if n0 > _EPS else 1.0
    n1 = n1 if n1 > _EPS else 1.0
    dot = float(torch.sum(v0 * v1, dtype=torch.float64)) / (n0 * n1)
    if abs(dot) > DOT_THRESHOLD:
        return tau * t
    omega = math.acos(max(-1.0, min(1.0, dot)))
    sin_omega = math.sin(omega)
    s0 = math.sin((1 - t) * omega) / sin_omega
    s1 = math.sin(t * omega) / sin_omega
    out = tau.mul_(s1) if tau is not taus[0] else tau * s1
    out.add_(v0, alpha=s0 + s1 - 1)
    return out
