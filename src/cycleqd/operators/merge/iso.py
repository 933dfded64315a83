"""Isotropic merging: Iso-C and Iso-CTS (Marczak et al., ICML 2025)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cycleqd.operators.merge.common import matrix_merge, polar_factor


def _weighted_sum(taus: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    out = taus[0].float() * weights[0]
    for t, w in zip(taus[1:], weights[1:], strict=True):
        out.add_(t.float(), alpha=w)
    return out


def iso_c(
    taus: Sequence[torch.Tensor],
    *,
    weights: Sequence[float] | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Iso-C: isotropic merging in the common subspace.

    Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
    Subspaces", ICML 2025. The task-arithmetic sum of a matrix, Δ = Σ_i w_i Δ_i = U Σ Vᵀ (thin SVD,
    r = min(m, n)), keeps its singular vectors and gets a flat spectrum:

        τ = α σ̄ U Vᵀ,     σ̄ = (1/r) Σ_j σ_j,

    so every direction of the common subspace is scaled alike (all singular values of τ equal α σ̄).
    Tensors that are not matrices are averaged, τ = α (1/T) Σ_i w_i Δ_i, as in the paper's code.
    α is ``scale`` (tuned on validation data in the paper). Weights are an extension (1 in the paper).

    Args:
        taus: Task vectors of one tensor, one per model.
        weights: Optional weight per model (default 1).
        scale: α, multiplies the merged task vector.

    Returns:
        The merged task vector (float32).

    Raises:
        ValueError: On mismatched inputs.
    """

    def flat(mats: Sequence[torch.Tensor], w: list[float]) -> torch.Tensor:
        u, s, vh = torch.linalg.svd(_weighted_sum(mats, w), full_matrices=False)
        return (u * s.mean()) @ vh

    return matrix_merge("iso_c", taus, weights, scale, flat)


def iso_cts(
    taus: Sequence[torch.Tensor],
    *,
    weights: Sequence[float] | None = None,
    scale: float = 1.0,
    common_space_fraction: float = 0.8,
) -> torch.Tensor:
    """Iso-CTS: isotropic merging in common and task-specific subspaces.

    Marczak et al., "No Task Left Behind", ICML 2025. For a matrix (r = min(m, n), T tasks), with
    Δ = Σ_i w_i Δ_i = U Σ Vᵀ:

    1. Common subspace: the top k singular triplets of Δ, where k = r − s T, s = round((r − ⌊f r⌋) / T)
       and f is ``common_space_fraction`` (0.8 in the paper), so the rest divides evenly among tasks.
    2. Task-specific subspaces: for each task, the top s singular triplets of
       Δ_i − U_k U_kᵀ Δ_i (its part outside the common subspace).
    3. All r left (right) vectors are stacked and replaced by their nearest orthogonal matrix
       (Procrustes, U⊥ = P Qᵀ), and the spectrum is made flat:

        τ = α σ̄ U⊥ V⊥ᵀ,     σ̄ = mean of the r selected singular values.

    Tensors that are not matrices are averaged, τ = α (1/T) Σ_i w_i Δ_i, as in the paper's code.

    Args:
        taus: Task vectors of one tensor, one per model.
        weights: Optional weight per model (default 1).
        scale: α, multiplies the merged task vector.
        common_space_fraction: f, the share of the rank given to the common subspace.

    Returns:
        The merged task vector (float32).

    Raises:
        ValueError: On mismatched inputs or a fraction outside [0, 1].
    """
    if not 0.0 <= common_space_fraction <= 1.0:
        raise ValueError(f"common_space_fraction must be in [0, 1], got {common_space_fraction}")

    def common_and_specific(mats: Sequence[torch.Tensor], w: list[float]) -> torch.Tensor:
        n_tasks = len(mats)
        r = min(mats[0].shape)
        per_task = round((r - int(r * common_space_fraction)) / n_tasks)
        k = max(0, r - per_task * n_tasks)
        u, s, vh = torch.linalg.svd(_weighted_sum(mats, w), full_matrices=False)
        us, ss, vhs = [u[:, :k]], [s[:k]], [vh[:k]]
        common = u[:, :k]
        if per_task > 0:
            for t, wi in zip(mats, w, strict=True):
                d = t.float() * wi
                specific = d - common @ (common.T @ d)
                u_i, s_i, vh_i = torch.linalg.svd(specific, full_matrices=False)
                us.append(u_i[:, :per_task])
                ss.append(s_i[:per_task])
                vhs.append(vh_i[:per_task])
        sigma = torch.cat(ss).mean()
        return (polar_factor(torch.cat(us, dim=1)) * sigma) @ polar_factor(torch.cat(vhs, dim=0))

    return matrix_merge("iso_cts", taus, weights, scale, common_and_specific)
