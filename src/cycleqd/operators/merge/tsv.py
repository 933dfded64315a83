"""TSV-M: merging with Task Singular Vectors (Gargiulo et al., CVPR 2025)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cycleqd.operators.merge.common import check_inputs, polar_factor, weighted_mean, weights_or_ones


def tsv_m(
    taus: Sequence[torch.Tensor],
    *,
    weights: Sequence[float] | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """TSV-M: merge with task singular vectors.

    Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025.
    For a matrix with T task vectors Δ_i = U_i Σ_i V_iᵀ (thin SVD, r = min(m, n)), each task keeps its
    top k = ⌊r / T⌋ singular triplets (at least 1). Stacking them,

        U = [U_1,k … U_T,k],   Σ = diag(Σ_1,k … Σ_T,k),   V = [V_1,k … V_T,k],

    the task singular vectors are decorrelated by replacing U and V with their nearest orthogonal
    matrices (orthogonal Procrustes: U⊥ = P Qᵀ for U = P S Qᵀ, likewise V⊥), and

        τ = α U⊥ Σ V⊥ᵀ,

    where α is ``scale`` (the paper uses α = 1, no tuning). Tensors that are not matrices (norms,
    biases) are averaged, τ = α (1/T) Σ_i w_i Δ_i, as in the paper's code. Per-model ``weights`` (an
    extension; all 1 in the paper) multiply each Δ_i first.

    Args:
        taus: Task vectors of one tensor, one per model.
        weights: Optional weight per model (default 1).
        scale: α, multiplies the merged task vector.

    Returns:
        The merged task vector (float32).

    Raises:
        ValueError: On mismatched inputs.
    """
    check_inputs("tsv_m", taus, weights=weights)
    w = weights_or_ones(weights, len(taus))
    if taus[0].ndim != 2:
        out = weighted_mean(taus, w)
    else:
        r = min(taus[0].shape)
        k = max(1, r // len(taus))
        us, ss, vhs = [], [], []
        for t, wi in zip(taus, w, strict=True):
            u, s, vh = torch.linalg.svd(t.float() * wi, full_matrices=False)
            us.append(u[:, :k])
            ss.append(s[:k])
            vhs.append(vh[:k])
        u_perp = polar_factor(torch.cat(us, dim=1))
        vh_perp = polar_factor(torch.cat(vhs, dim=0))
        out = (u_perp * torch.cat(ss).unsqueeze(0)) @ vh_perp
    if scale != 1.0:
        out.mul_(scale)
    return out
