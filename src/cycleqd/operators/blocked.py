"""Weighted sums of same-shaped tensors in one pass over memory, with an optional low-rank term."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_BLOCK = 1 << 20


def weighted_sum(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
    out_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Σ_i w_i x_i (+ A B), accumulated in float32 and written once in ``out_dtype``.

    On the CPU the sum runs over blocks of about 2**20 entries (whole rows for matrices) so that each
    block of the accumulator stays in cache while every input is added to it; the block is then cast
    into the output. Memory traffic is one read per input and one write of the result, instead of a
    read and a write of a float32 result per input (and another pass to cast it). Inputs in bfloat16
    or float16 are upcast exactly before they are multiplied. A low-rank term A B (A: m × k,
    B: k × n) is added block by block from the rows of A, so the m × n product is never materialised.

    Args:
        tensors: Inputs of one shape, any floating dtype.
        weights: One weight per input.
        low_rank: Optional factors (A, B) of a term A @ B added to 2-D inputs.
        out_dtype: Dtype of the result.
        device: Where to compute (default: the first input's device).

    Returns:
        The sum, in ``out_dtype``.

    Raises:
        ValueError: When the counts or shapes differ, or the low-rank factors do not fit.
    """
    if len(tensors) != len(weights) or not tensors:
        raise ValueError(f"weighted_sum got {len(tensors)} tensors and {len(weights)} weights")
    shape = tensors[0].shape
    if any(t.shape != shape for t in tensors):
        raise ValueError(f"weighted_sum needs tensors of one shape, got {[tuple(t.shape) for t in tensors]}")
    dev = torch.device(device) if device is not None else tensors[0].device
    if low_rank is not None:
        a, b = low_rank
        if len(shape) != 2 or a.shape[0] != shape[0] or b.shape[1] != shape[1] or a.shape[1] != b.shape[0]:
            raise ValueError(
                f"low-rank factors {tuple(a.shape)} @ {tuple(b.shape)} do not make a tensor of "
                f"shape {tuple(shape)}"
            )
        a, b = a.to(dev, torch.float32), b.to(dev, torch.float32)
    out = torch.empty(shape, dtype=out_dtype, device=dev)
    flat_out = out.view(-1)
    n = flat_out.numel()
    if n == 0:
        return out
    row = shape[-1] if len(shape) == 2 and shape[-1] > 0 else 1
    if dev.type == "cpu":
        rows = max(1, _BLOCK // row)
        step = rows * row
    else:
        step = n
    flats = [(t.to(dev).reshape(-1), float(w)) for t, w in zip(tensors, weights, strict=True)]
    direct = out_dtype == torch.float32
    acc_buf = None if direct else torch.empty(min(step, n), dtype=torch.float32, device=dev)
    # bf16/fp16 inputs are upcast block by block (exactly) into a scratch buffer: multiplying in bf16
    # would round, and a float32 add of an upcast block is faster than the mixed-dtype kernel.
    scratch = torch.empty(min(step, n), dtype=torch.float32, device=dev)
    for s in range(0, n, step):
        e = min(n, s + step)
        acc = flat_out[s:e] if direct else acc_buf[: e - s]
        x, w = flats[0]
        if x.dtype == torch.float32:
            torch.mul(x[s:e], w, out=acc)
        else:
            acc.copy_(x[s:e])
            acc.mul_(w)
        for x, w in flats[1:]:
            if x.dtype == torch.float32:
                acc.add_(x[s:e], alpha=w)
            else:
                up = scratch[: e - s]
                up.copy_(x[s:e])
                acc.add_(up, alpha=w)
        if low_rank is not None:
            r0, r1 = s // row, e // row
            acc.view(r1 - r0, row).addmm_(a[r0:r1], b)
        if not direct:
            flat_out[s:e].copy_(acc)
    return out
