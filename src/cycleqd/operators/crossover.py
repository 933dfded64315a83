"""Crossover: a linear merge of the parents' task vectors with random weights (CycleQD, section 3.2).

ω_i ~ N(μ, σ²) for each parent, w_i = ω_i / Σ_j ω_j, τ_child = Σ_i w_i τ_i. The official code uses
μ = 1, σ = 0.01, so children stay close to the average of their parents. The per-layer variant draws
one ω per parent for every layer group (``model.layers.7.*`` is group ``layer.7``; tensors outside the
numbered blocks, such as embeddings, form the group ``other``).

Drawing and applying are separate steps: :func:`draw_crossover` returns a :class:`CrossoverPlan` that
holds every coefficient (recorded in the run registry), and :func:`crossover_tensor` applies it to one
tensor at a time, so a child can be built while streaming its parents from disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from cycleqd.operators.merge.linear import linear

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
OTHER_GROUP = "other"


def layer_group(name: str) -> str:
    """The layer group of a tensor name: ``layer.<i>`` inside numbered blocks, else ``other``.

    Args:
        name: A tensor name such as ``model.layers.3.mlp.up_proj.weight``.

    Returns:
        The group label.
    """
    m = _LAYER.search(name)
    return f"layer.{int(m.group(1))}" if m else OTHER_GROUP


def _group_order(group: str) -> tuple[int, int]:
    return (1, 0) if group == OTHER_GROUP else (0, int(group.split(".")[1]))


@dataclass(frozen=True)
class CrossoverPlan:
    """The drawn coefficients of one crossover.

    Attributes:
        weights: Normalised weights per group: group label → one weight per parent (summing to 1).
        omegas: The raw draws ω per group, before normalisation.
        per_layer: Whether groups are layers (else one group, ``all``).
    """

    weights: dict[str, list[float]]
    omegas: dict[str, list[float]] = field(default_factory=dict)
    per_layer: bool = False

    def weights_for(self, name: str) -> list[float]:
        """The parents' weights for one tensor.

        Args:
            name: Tensor name.

        Returns:
            One weight per parent.
        """
        if not self.per_layer:
            return self.weights["all"]
        return self.weights[layer_group(name)]

    def to_record(self) -> dict[str, object]:
        """A JSON-ready summary for the run registry."""
        return {"per_layer": self.per_layer, "weights": self.weights, "omegas": self.omegas}


def draw_crossover(
    *,
    generator: torch.Generator,
    n_parents: int = 2,
    mean: float = 1.0,
    std: float = 0.01,
    names: Iterable[str] | None = None,
    per_layer: bool = False,
) -> CrossoverPlan:
    """Draw the crossover coefficients ω ~ N(mean, std²) and normalise them to sum 1.

    Args:
        generator: Source of the draws.
        n_parents: Number of parents.
        mean: μ of the normal distribution.
        std: σ of the normal distribution.
        names: Tensor names of the model; needed for ``per_layer``.
        per_layer: Draw one set of ω per layer group.

    Returns:
        The :class:`CrossoverPlan`.

    Raises:
        ValueError: If ``per_layer`` without ``names``, or the draws of a group sum to about zero
            (choose a larger ``mean`` or a smaller ``std``).
    """
    if per_layer:
        if names is None:
            raise ValueError("per-layer crossover needs the tensor names")
        groups = sorted({layer_group(n) for n in names}, key=_group_order)
    else:
        groups = ["all"]
    draws = torch.randn((len(groups), n_parents), generator=generator, dtype=torch.float64) * std + mean
    weights, omegas = {}, {}
    for group, row in zip(groups, draws.tolist(), strict=True):
        total = sum(row)
        if abs(total) < 1e-6:
            raise ValueError(
                f"crossover weights of group {group} sum to {total:.2e}; use a mean far from 0 "
                f"relative to std (mean={mean}, std={std})"
            )
        omegas[group] = row
        weights[group] = [w / total for w in row]
    return CrossoverPlan(weights=weights, omegas=omegas, per_layer=per_layer)


def crossover_tensor(name: str, parent_taus: Sequence[torch.Tensor], plan: CrossoverPlan) -> torch.Tensor:
    """Apply a crossover plan to one tensor: Σ_i w_i τ_i.

    Args:
        name: Tensor name (selects the layer group).
        parent_taus: The parents' task vectors for this tensor.
        plan: The drawn coefficients.

    Returns:
        The child's task vector for this tensor, float32.
    """
    return linear(parent_taus, weights=plan.weights_for(name), normalize=False)


def crossover(
    parent_taus: Sequence[Mapping[str, torch.Tensor]],
    *,
    generator: torch.Generator,
    mean: float = 1.0,
    std: float = 0.01,
    per_layer: bool = False,
) -> tuple[dict[str, torch.Tensor], CrossoverPlan]:
    """Model-wise (or per-layer) linear crossover of the parents' task vectors.

    Args:
        parent_taus: Task vectors of the parents (mappings with the same names).
        generator: Source of the draws.
        mean: μ of ω.
        std: σ of ω.
        per_layer: One ω per parent and layer group.

    Returns:
        The child's task vector and the plan that made it.
    """
    names = list(parent_taus[0])
    plan = draw_crossover(
        generator=generator, n_parents=len(parent_taus), mean=mean, std=std, names=names, per_layer=per_layer
    )
    child = {n: crossover_tensor(n, [p[n] for p in parent_taus], plan) for n in names}
    return child, plan
