"""Checks and small helpers shared by the merge methods."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def check_inputs(method: str, taus: Sequence[torch.Tensor], **per_model: Sequence[float] | None) -> None:
    """Refuse an empty list of task vectors, mismatched shapes, or per-model values of the wrong length.

    Args:
        method: Name of the merge method, for messages.
        taus: Task vectors of one tensor, one per model.
        **per_model: Per-model values (``weights=...``, ``densities=...``); ``None`` is skipped.

    Raises:
        ValueError: With what was wrong.
    """
    if not taus:
        raise ValueError(f"{method} merge got no task vectors; give at least one model besides the base")
    shape = taus[0].shape
    for i, t in enumerate(taus[1:], start=1):
        if t.shape != shape:
            raise ValueError(
                f"{method} merge got task vectors of different shapes: {list(shape)} (model 0) and "
                f"{list(t.shape)} (model {i}); all models must share the base's shapes"
            )
    for label, values in per_model.items():
        if values is not None and len(values) != len(taus):
            raise ValueError(f"{method} merge got {len(taus)} task vectors but {len(values)} {label}")


def weights_or_ones(weights: Sequence[float] | None, n: int) -> list[float]:
    """The per-model weights, or ``n`` ones when none are given."""
    return [1.0] * n if weights is None else [float(w) for w in weights]


def weighted_mean(taus: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """(1/K) Σ_i w_i τ_i in float32: the fallback of the SVD methods for tensors that are not matrices.

    Args:
        taus: Task vectors, one per model.
        weights: One weight per model (ones give the plain mean).

    Returns:
        A new float32 tensor.
    """
    out = taus[0].float() * (weights[0] / len(taus))
    for t, w in zip(taus[1:], weights[1:], strict=True):
        out.add_(t.float(), alpha=w / len(taus))
    return out


def polar_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor P Qᵀ of a matrix with thin SVD P S Qᵀ.

    It is the matrix with orthonormal columns (or rows, for a wide matrix) nearest to ``matrix`` in
    Frobenius norm (orthogonal Procrustes), which TSV-M and Iso-CTS use to whiten stacked singular
    vectors.

    Args:
        matrix: A 2-D float tensor.

    Returns:
        The polar factor, same shape.
    """
    p, _, qh = torch.linalg.svd(matrix, full_matrices=False)
    return p @ qh


def matrix_merge(
    method: str,
    taus: Sequence[torch.Tensor],
    weights: Sequence[float] | None,
    scale: float,
    merge_matrices: Callable[[Sequence[torch.Tensor], list[float]], torch.Tensor],
) -> torch.Tensor:
    """The frame of the SVD methods: matrices through ``merge_matrices``, other tensors averaged, × α.

    Tensors that are not matrices (norms, biases) get τ = (1/T) Σ_i w_i Δ_i, as the papers' code does;
    the result is multiplied by ``scale`` (α).

    Args:
        method: The method's name, for messages.
        taus: Task vectors of one tensor, one per model.
        weights: Optional weight per model (default 1).
        scale: α.
        merge_matrices: The method's merge of matrices (task vectors and weights → a new tensor).

    Returns:
        The merged task vector (float32).

    Raises:
        ValueError: On mismatched inputs.
    """
    check_inputs(method, taus, weights=weights)
    w = weights_or_ones(weights, len(taus))
    out = weighted_mean(taus, w) if taus[0].ndim != 2 else merge_matrices(taus, w)
    if scale != 1.0:
        out.mul_(scale)
    return out
