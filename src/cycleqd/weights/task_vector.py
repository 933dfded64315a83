"""Task vectors: the difference between a fine-tuned model and its base, in float32."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def task_vector(
    model: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """τ = θ − θ0 for every floating-point tensor of the base, computed in float32.

    Args:
        model: Fine-tuned weights (a :class:`~cycleqd.weights.ModelSource` or a dict).
        base: Base weights with the same names and shapes.

    Returns:
        A dict of float32 tensors, one per floating-point base tensor (integer buffers have none).
    """
    out = {}
    for name in base:
        b = base[name]
        if b.is_floating_point():
            out[name] = model[name].float() - b.float()
    return out


def apply_task_vector(
    base: Mapping[str, torch.Tensor],
    tau: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = torch.float32,
) -> dict[str, torch.Tensor]:
    """θ = θ0 + τ, computed in float32 and cast to ``dtype``.

    Tensors of the base that ``tau`` lacks are copied unchanged.

    Args:
        base: Base weights.
        tau: Task vector (float32).
        dtype: Dtype of the result; ``None`` keeps each base tensor's dtype.

    Returns:
        The model's weights as a dict.
    """
    out = {}
    for name in base:
        b = base[name]
        target = dtype or b.dtype
        if name in tau and b.is_floating_point():
            out[name] = (b.float() + tau[name]).to(target)
        else:
            out[name] = b.to(target) if b.is_floating_point() else b
    return out
