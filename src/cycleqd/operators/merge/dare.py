"""DARE: drop and rescale task-vector entries at random, then merge linearly or with TIES."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cycleqd.operators.merge.common import check_inputs
from cycleqd.operators.merge.linear import linear
from cycleqd.operators.merge.ties import Consensus, sign_consensus_merge


def dare_drop(
    tau: torch.Tensor,
    density: float,
    *,
    generator: torch.Generator,
    rescale: bool = True,
) -> torch.Tensor:
    """DARE's drop step (Yu et al., "Language Models are Super Mario", ICML 2024).

        m ~ Bernoulli(d) per entry,      τ̃ = m ⊙ τ / d      (÷ d only with ``rescale``)

    where d is the density (1 − the paper's drop rate p), so E[τ̃] = τ. ``density >= 1`` returns
    ``tau`` unchanged (no draw); ``density <= 0`` returns zeros.

    Args:
        tau: A task vector.
        density: Probability of keeping each entry.
        generator: Source of the Bernoulli draws (seeded by the caller per tensor).
        rescale: Divide the kept entries by the density.

    Returns:
        The sparsified task vector (float32).
    """
    tau = tau.float()
    if density >= 1:
        return tau
    if density <= 0:
        return torch.zeros_like(tau)
    keep = torch.rand(tau.shape, generator=generator, device=generator.device) < density
    out = tau * keep.to(tau.device)
    if rescale:
        out.div_(density)
    return out


def dare_linear(
    taus: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    densities: Sequence[float],
    generator: torch.Generator,
    rescale: bool = True,
    normalize: bool = False,
    scale: float = 1.0,
) -> torch.Tensor:
    """DARE with a linear merge (Yu et al., ICML 2024; mergekit's ``dare_linear``).

        τ = λ Σ_i w_i DARE_{d_i}(τ_i)        (÷ Σ_i w_i with ``normalize``)

    Models draw in order from ``generator``, so one seed gives one result.

    Args:
        taus: Task vectors of one tensor, one per model.
        weights: One weight per model.
        densities: Keep probability per model.
        generator: Source of the draws.
        rescale: Divide kept entries by the density (paper); off keeps them as they are.
        normalize: Divide by the sum of the weights.
        scale: λ, multiplies the result.

    Returns:
        The merged task vector (float32).

    Raises:
        ValueError: On mismatched inputs.
    """
    check_inputs("dare_linear", taus, weights=weights, densities=densities)
    dropped = [
        dare_drop(t, float(d), generator=generator, rescale=rescale)
        for t, d in zip(taus, densities, strict=True)
    ]
    out = linear(dropped, weights=weights, normalize=normalize)
    if scale != 1.0:
        out.mul_(scale)
    return out


def dare_ties(
    taus: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    densities: Sequence[float],
    generator: torch.Generator,
    rescale: bool = True,
    normalize: bool = False,
    scale: float = 1.0,
    consensus: Consensus = "sum",
) -> torch.Tensor:
    """DARE's random drop followed by TIES's sign election and disjoint merge (mergekit's ``dare_ties``).

        τ̃_i = DARE_{d_i}(τ_i),   γ = sgn(Σ_i w_i τ̃_i),   τ = λ Σ_i A_i w_i τ̃_i  (÷ Σ_i A_i w_i)

    with A_i = [sgn(w_i τ̃_i) = γ]. mergekit's default leaves ``normalize`` off here.

    Args:
        taus: Task vectors of one tensor, one per model.
        weights: One weight per model.
        densities: Keep probability per model.
        generator: Source of the draws.
        rescale: Divide kept entries by the density.
        normalize: Divide by the summed weights of the agreeing models.
        scale: λ, multiplies the result.
        consensus: ``sum`` or ``count`` sign election.

    Returns:
        The merged task vector (float32).

    Raises:
        ValueError: On mismatched inputs.
    """
    check_inputs("dare_ties", taus, weights=weights, densities=densities)
    dropped = [
        dare_drop(t, float(d), generator=generator, rescale=rescale)
        for t, d in zip(taus, densities, strict=True)
    ]
    return sign_consensus_merge(
        dropped, weights=weights, normalize=normalize, scale=scale, consensus=consensus
    )
