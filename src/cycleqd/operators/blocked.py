"""Weighted sums of same-shaped tensors in one pass over memory, with an optional low-rank term."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import torch

# 2**20 entries per block (4 MiB of float32 per buffer). Measured on a 2-core VM (bench/bench_child.py
# and a sweep over one 8192 x 2048 bfloat16 matrix, low-rank term of rank 32): 0.43-0.49 ns per entry
# at 2**20 against 0.55-0.65 at 2**18 and 0.6-0.9 at 2**21; smaller blocks pay per-call overhead
# (thread start-up of each operation), larger ones fall out of cache.
_BLOCK = 1 << 20

_workspace = threading.local()


def _buffer(slot: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A scratch buffer of ``numel`` entries, kept per thread and reused by later calls on the CPU.

    Allocating a fresh buffer for every tensor costs page faults on memory the allocator handed back
    to the system; a kept buffer is already mapped (and warm in cache).
    """
    if device.type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    key = (slot, dtype)
    held = getattr(_workspace, "buffers", None)
    if held is None:
        held = _workspace.buffers = {}
    buf = held.get(key)
    if buf is None or buf.numel() < numel:
        buf = held[key] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


@functools.cache
def native_bf16_matmul(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (faster than float32).

    CUDA devices and x86 CPUs with AVX512-BF16 or AMX do; elsewhere torch's bfloat16 product is a
    slow generic loop.

    Args:
        device: The device.

    Returns:
        True where a bfloat16 matrix product is native.
    """
    if device.type != "cpu":
        return True
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def weighted_sum(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
    out_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    out: torch.Tensor | None = None,
    low_rank_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Σ_i w_i x_i (+ A B), accumulated in float32 and written once in ``out_dtype``.

    On the CPU the sum runs over blocks of about 2**20 entries (whole rows for matrices) so that each
    block of the accumulator stays in cache while every input is added to it; the block is then cast
    into the output. Memory traffic is one read per input and one write of the result, instead of a
    read and a write of a float32 result per input (and another pass to cast it). Inputs in bfloat16
    or float16 are upcast exactly before they are multiplied. A low-rank term A B (A: m × k,
    B: k × n) is computed block by block from the rows of A straight into the accumulator (the inputs
    are then added to it), so the m × n product is never materialised; with ``low_rank_dtype``
    bfloat16 the product is rounded once to bfloat16 before it joins the accumulator. Scratch
    buffers are kept per thread between calls.

    ``out`` lets a caller reuse memory it already holds: writing into fresh memory costs a page fault
    per 4 KiB page, which on some machines takes longer than the arithmetic.

    Args:
        tensors: Inputs of one shape, any floating dtype.
        weights: One weight per input.
        low_rank: Optional factors (A, B) of a term A @ B added to 2-D inputs.
        out_dtype: Dtype of the result.
        device: Where to compute (default: the first input's device).
        out: Optional contiguous tensor of the inputs' shape, in ``out_dtype`` on ``device``, that
            receives the result.
        low_rank_dtype: Dtype the product A B is computed in: float32 (exact up to float32 rounding)
            or bfloat16 (factors rounded to bfloat16, products summed in float32, the result rounded
            once to bfloat16: relative error a few 2^-9; about 3x faster where
            :func:`native_bf16_matmul`, otherwise computed as that in float32 and rounded).

    Returns:
        The sum, in ``out_dtype`` (``out`` when it was given).

    Raises:
        ValueError: When the counts or shapes differ, the low-rank factors do not fit or
            ``low_rank_dtype`` is neither float32 nor bfloat16, or ``out`` does not match.
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
        if low_rank_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"low_rank_dtype must be torch.float32 or torch.bfloat16, got {low_rank_dtype}")
        a, b = a.to(dev, low_rank_dtype), b.to(dev, low_rank_dtype)
        native = low_rank_dtype == torch.bfloat16 and native_bf16_matmul(dev)
        if low_rank_dtype == torch.bfloat16 and not native:
            # the same product without bf16 matrix units: bf16 factors times each other are exact
            # in float32, summed in float32, and the result is rounded once to bf16 below
            a, b = a.float(), b.float()
    if out is None:
        out = torch.empty(shape, dtype=out_dtype, device=dev)
    elif (out.shape, out.dtype, out.device.type) != (shape, out_dtype, dev.type) or not out.is_contiguous():
        raise ValueError(
            f"weighted_sum's out is a {'' if out.is_contiguous() else 'non-contiguous '}{out.dtype} "
            f"tensor of shape {tuple(out.shape)} on {out.device}; it needs a contiguous {out_dtype} "
            f"tensor of shape {tuple(shape)} on {dev}"
        )
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
    acc_buf = None if direct else _buffer("acc", min(step, n), torch.float32, dev)
    # bf16/fp16 inputs are upcast block by block (exactly) into a scratch buffer: multiplying in bf16
    # would round, and a float32 add of an upcast block is no slower than the mixed-dtype kernel.
    scratch = _buffer("upcast", min(step, n), torch.float32, dev)
    lr_buf = None
    if low_rank is not None and low_rank_dtype != torch.float32:
        lr_buf = _buffer("low-rank", min(step, n), low_rank_dtype, dev)
    for s in range(0, n, step):
        e = min(n, s + step)
        acc = flat_out[s:e] if direct else acc_buf[: e - s]
        pending = flats
        if low_rank is not None:  # the low-rank block starts the accumulator
            r0, r1 = s // row, e // row
            block = acc.view(r1 - r0, row)
            if lr_buf is None:
                torch.mm(a[r0:r1], b, out=block)
            else:
                lr = lr_buf[: e - s].view(r1 - r0, row)
                if native:
                    torch.mm(a[r0:r1], b, out=lr)
                else:
                    torch.mm(a[r0:r1], b, out=block)
                    lr.copy_(block)
                block.copy_(lr)
        else:  # the first input does
            (x, w), pending = flats[0], flats[1:]
            if x.dtype == torch.float32:
                torch.mul(x[s:e], w, out=acc)
            else:
                acc.copy_(x[s:e])
                acc.mul_(w)
        for x, w in pending:
            if x.dtype == torch.float32:
                acc.add_(x[s:e], alpha=w)
            else:
                up = scratch[: e - s]
                up.copy_(x[s:e])
                acc.add_(up, alpha=w)
        if not direct:
            flat_out[s:e].copy_(acc)
    return out
