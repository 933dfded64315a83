"""Weighted sums of same-shaped tensors in one pass over memory."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_BLOCK = 1 << 20


def weighted_sum(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Σ_i w_i x_i accumulated in float32 into one new tensor.

    On the CPU the sum runs over blocks of 2**20 entries (4 MiB of float32) so that each block of the
    result stays in cache while every input is added to it: memory traffic is one read per input and
    one write of the result, instead of a read and a write of the whole result per input. Inputs in
    bfloat16 or float16 are upcast exactly before they are multiplied.

    Args:
        tensors: Inputs of one shape, any floating dtype.
        weights: One weight per input.
        device: Where to compute (default: the first input's device).

    Returns:
        The float32 sum.

    Raises:
        ValueError: When the counts or shapes differ.
    """
    if len(tensors) != len(weights) or not tensors:
        raise ValueError(f"weighted_sum got {len(tensors)} tensors and {len(weights)} weights")
    shape = tensors[0].shape
    if any(t.shape != shape for t in tensors):
        raise ValueError(f"weighted_sum needs tensors of one shape, got {[tuple(t.shape) for t in tensors]}")
    dev = torch.device(device) if device is not None else tensors[0].device
    flats = [(t.to(dev).reshape(-1), float(w)) for t, w in zip(tensors, weights, strict=True)]
    out = torch.empty(shape, dtype=torch.float32, device=dev)
    flat = out.view(-1)
    n = flat.numel()
    step = _BLOCK if dev.type == "cpu" else max(n, 1)
    # bf16/fp16 inputs are upcast block by block (exactly) before use: multiplying in bf16 would
    # round, and a float32 add of an upcast block is faster than the mixed-dtype kernel.
    scratch = torch.empty(min(step, n), dtype=torch.float32, device=dev)
    for s in range(0, n, step):
        e = min(n, s + step)
        block = flat[s:e]
        x, w = flats[0]
        if x.dtype == torch.float32:
            torch.mul(x[s:e], w, out=block)
        else:
            block.copy_(x[s:e])
            block.mul_(w)
        for x, w in flats[1:]:
            if x.dtype == torch.float32:
                block.add_(x[s:e], alpha=w)
            else:
                up = scratch[: e - s]
                up.copy_(x[s:e])
                block.add_(up, alpha=w)
    return out
