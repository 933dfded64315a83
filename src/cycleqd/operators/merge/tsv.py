"""TSV-M: merging with Task Singular Vectors (Gargiulo et al., CVPR 2025)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cycleqd.operators.merge.common import matrix_merge, polar_factor


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
        taus: Task vectors Δ_i of one tensor, one per task.
        weights: Weight w_i of each task (default 1).
        scale: α.

    Returns:
        τ (float32).

    Raises:
        ValueError: When the task vectors differ in shape or the weights in number.
    """

    def decorrelated(mats: Sequence[torch.Tensor], w: list[float]) -> torch.Tensor:
        k = max(1, min(mats[0].shape) // len(mats))
        us, ss, vhs = [], [], []
        for t, wi in zip(mats, w, strict=True):
            u, s, vh = torch.linalg.svd(t.float() * wi, full_matrices=False)
            us.append(u[:, :k])
            ss.append(s[:k])
            vhs.append(vh[:k])
        u_perp = polar_factor(torch.cat(us, dim=1))
        vh_perp = polar_factor(torch.cat(vhs, dim=0))
        return (u_perp * torch.cat(ss).unsqueeze(0)) @ vh_perp

    return matrix_merge("tsv_m", taus, weights, scale, decorrelated)
