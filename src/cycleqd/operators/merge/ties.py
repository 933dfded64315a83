"""TIES-merging: trim, elect sign, disjoint merge (Yadav et al., NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from cycleqd.operators.merge.common import check_inputs

Consensus = Literal["sum", "count"]


def magnitude_prune(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, ⌊density · n⌋) entries of largest magnitude and zero the rest (TIES "trim").

    Entries whose magnitude ties with the k-th largest are kept in index order until k are kept, so
    exactly k entries survive. ``density >= 1`` returns ``tau`` itself (no copy); ``density <= 0``
    returns zeros.

    Args:
        tau: A task vector (any shape).
        density: Fraction of entries to keep, in (0, 1].

    Returns:
        The trimmed task vector (float32).
    """
    tau = tau.float()
    n = tau.numel()
    if density >= 1:
        return tau
    if density <= 0 or n == 0:
        return torch.zeros_like(tau)
    k = max(1, int(density * n))
    flat = tau.reshape(-1)
    mag = flat.abs()
    threshold = kth_largest(mag, k)
    keep = mag >= threshold
    extra = int(torch.count_nonzero(keep)) - k
    if extra > 0:
        tied = torch.nonzero(mag == threshold).squeeze(1)
        keep[tied[tied.numel() - extra :]] = False
    # Multiplying by the mask (into the buffer of the magnitudes) is much faster than torch.where.
    return torch.mul(flat, keep, out=mag).view_as(tau)


_SAMPLE = 1 << 16
_EXACT_BELOW = 1 << 20


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a 1-D tensor (exact), in expected O(n) time without a full sort.

    Large inputs are narrowed first: quantiles of a fixed-seed sample of 65,536 entries bracket the
    answer, the entries between the brackets (a few percent) are selected exactly, and the count of
    entries above the upper bracket says which of them is the k-th. When the brackets miss (possible
    only for adversarial data) it falls back to ``torch.kthvalue`` on everything.

    Args:
        values: A 1-D float tensor.
        k: Rank from the top, 1 ≤ k ≤ n.

    Returns:
        A 0-d tensor holding the value.
    """
    n = values.numel()
    if n <= _EXACT_BELOW:
        return torch.kthvalue(values, n - k + 1).values
    g = torch.Generator(device=values.device).manual_seed(0)
    sample = values[torch.randint(n, (_SAMPLE,), generator=g, device=values.device)]
    q = 1.0 - k / n
    margin = 5.0 / _SAMPLE**0.5 + 1.0 / _SAMPLE
    lo_q, hi_q = max(0.0, q - margin), min(1.0, q + margin)
    lo, hi = torch.quantile(sample, torch.tensor([lo_q, hi_q], device=values.device))
    above = int(torch.count_nonzero(values > hi))
    band = values[(values >= lo) & (values <= hi)]
    need = k - above
    if 0 < need <= band.numel():
        return torch.kthvalue(band, band.numel() - need + 1).values
    return torch.kthvalue(values, n - k + 1).values


def sign_consensus_merge(
    taus: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    normalize: bool = True,
    scale: float = 1.0,
    consensus: Consensus = "sum",
) -> torch.Tensor:
    """TIES's sign election and disjoint merge of (already trimmed) task vectors.

    With weighted task vectors δ_i = w_i τ_i, the elected sign per entry is

        γ = sgn(Σ_i δ_i)               (``consensus="sum"``, the paper's rule; γ = +1 where the sum is 0)
        γ = sgn(Σ_i sgn(δ_i))          (``consensus="count"``)

    and only the entries that agree with it are kept: A_i = [sgn(δ_i) = γ] (zeros never agree). Then

        τ = λ Σ_i A_i δ_i / Σ_i A_i w_i      (the divisor is taken as 1 where it is 0)

    and without ``normalize`` the division is skipped. With unit weights the normalised form is the
    paper's disjoint mean. The weighted form and its defaults follow mergekit's ``ties``.

    Args:
        taus: Task vectors of one tensor, one per model.
        weights: One weight per model.
        normalize: Divide by the summed weights of the agreeing models.
        scale: λ, multiplies the result (mergekit's ``lambda``).
        consensus: ``sum`` (TIES) or ``count`` (majority of signs).

    Returns:
        The merged task vector (float32).

    Raises:
        ValueError: On mismatched inputs or an unknown consensus rule.
    """
    check_inputs("ties", taus, weights=weights)
    if consensus not in ("sum", "count"):
        raise ValueError(f"unknown sign consensus {consensus!r}; use 'sum' or 'count'")
    deltas = [t.float() * float(w) for t, w in zip(taus, weights, strict=True)]
    if consensus == "sum":
        elected = deltas[0].clone()
        for d in deltas[1:]:
            elected.add_(d)
    else:
        elected = deltas[0].sign()
        for d in deltas[1:]:
            elected.add_(d.sign())
    # γ as ±1 in place (+1 where the vote is 0); an entry agrees when δ γ > 0, which zeros never do.
    positive = elected >= 0
    torch.mul(positive, 2.0, out=elected).sub_(1.0)
    mixed: torch.Tensor | None = None
    divisor: torch.Tensor | None = None
    scratch = torch.empty_like(elected)
    for d, w in zip(deltas, weights, strict=True):
        agree = torch.mul(d, elected, out=scratch) > 0
        d.mul_(agree)
        mixed = d if mixed is None else mixed.add_(d)
        if normalize:
            divisor = agree.float().mul_(float(w)) if divisor is None else divisor.add_(agree, alpha=float(w))
    del scratch, elected, positive
    assert mixed is not None
    if divisor is not None:
        divisor.add_(divisor == 0)  # mergekit's rule: a divisor of 0 counts as 1
        mixed.div_(divisor)
    if scale != 1.0:
        mixed.mul_(scale)
    return mixed


def ties(
    taus: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    densities: Sequence[float],
    normalize: bool = True,
    scale: float = 1.0,
    consensus: Consensus = "sum",
) -> torch.Tensor:
    """TIES-merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023).

    1. Trim: τ̂_i keeps the ⌊d_i · n⌋ largest-magnitude entries of τ_i (:func:`magnitude_prune`).
    2. Elect: γ = sgn(Σ_i w_i τ̂_i).
    3. Disjoint merge: τ = λ Σ_i A_i w_i τ̂_i / Σ_i A_i w_i with A_i = [sgn(w_i τ̂_i) = γ]
       (:func:`sign_consensus_merge`).

    With density 1 and task vectors whose signs agree everywhere this is the normalised weighted sum
    Σ_i w_i τ_i / Σ_i w_i. Semantics and defaults (normalize on, λ = 1) follow mergekit's ``ties``.

    Args:
        taus: Task vectors of one tensor, one per model.
        weights: One weight per model (mergekit's ``weight``).
        densities: Fraction of entries each model keeps (mergekit's ``density``).
        normalize: Divide by the summed weights of the agreeing models.
        scale: λ, multiplies the result.
        consensus: ``sum`` (TIES) or ``count``.

    Returns:
        The merged task vector (float32).

    Raises:
        ValueError: On mismatched inputs.
    """
    check_inputs("ties", taus, weights=weights, densities=densities)
    trimmed = [magnitude_prune(t, float(d)) for t, d in zip(taus, densities, strict=True)]
    return sign_consensus_merge(
        trimmed, weights=weights, normalize=normalize, scale=scale, consensus=consensus
    )
