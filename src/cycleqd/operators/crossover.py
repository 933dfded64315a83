"""Crossover: a linear merge of the parents' task vectors with random weights (CycleQD, section 3.2).

ω_i ~ N(μ, σ²) for each parent, w_i = ω_i / Σ_j ω_j, τ_child = Σ_i w_i τ_i. The official code uses
μ = 1, σ = 0.01, so children stay close to the average of their parents. The per-layer variant draws
one ω per parent for every layer group (``model.layers.7.*`` is group ``layer.7``; tensors outside the
numbered blocks, such as embeddings, form the group ``other``).

Two options go beyond the paper, both off by default:

- ``layer_std``: hierarchical per-layer weights, ω_{i,g} = ω_i + σ_L z_{i,g} around one model-wise
  draw ω_i ~ N(μ, σ²), so that layers can move apart (AdaMerging-style) while the model-wise
  balance keeps its own spread.
- ``scale_std``: a drawn scale s = exp(σ_s z) multiplies the normalised weights, so the child's
  coefficients need not sum to 1: τ_child = s Σ_i w_i τ_i. With σ_s = 0 (the paper) s = 1. The scale
  comes from its own stream of the generator's seed (:func:`draw_scale`), so the weights of a
  configuration without it are drawn exactly as before.

Drawing and applying are separate steps: :func:`draw_crossover` returns a :class:`CrossoverPlan` that
holds every coefficient (recorded in the run registry), and :func:`crossover_tensor` applies it to one
tensor at a time, so a child can be built while streaming its parents from disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cycleqd.operators.merge.linear import linear
from cycleqd.operators.merge.registry import get_merge_method

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
        scale: The drawn scale s of the child's task vector (1: the paper's crossover).
    """

    weights: dict[str, list[float]]
    omegas: dict[str, list[float]] = field(default_factory=dict)
    per_layer: bool = False
    scale: float = 1.0

    def weights_for(self, name: str) -> list[float]:
        """The parents' coefficients for one tensor: τ_child = Σ_i c_i τ_i (c_i = s w_i).

        Args:
            name: Tensor name.

        Returns:
            One coefficient per parent; they sum to the scale s.
        """
        weights = self.weights["all"] if not self.per_layer else self.weights[layer_group(name)]
        return weights if self.scale == 1.0 else [self.scale * w for w in weights]

    def to_record(self) -> dict[str, object]:
        """A JSON-ready summary for the run registry (the scale only where one was drawn)."""
        record: dict[str, object] = {
            "per_layer": self.per_layer,
            "weights": self.weights,
            "omegas": self.omegas,
        }
        if self.scale != 1.0:
            record["scale"] = self.scale
        return record


def draw_crossover(
    *,
    generator: torch.Generator,
    n_parents: int = 2,
    mean: float = 1.0,
    std: float = 0.01,
    names: Iterable[str] | None = None,
    per_layer: bool = False,
    layer_std: float | None = None,
    scale: float = 1.0,
) -> CrossoverPlan:
    """Draw the crossover coefficients ω ~ N(mean, std²) and normalise them to sum 1.

    Args:
        generator: Source of the draws.
        n_parents: Number of parents.
        mean: μ of the normal distribution.
        std: σ of the normal distribution.
        names: Tensor names of the model; needed for ``per_layer``.
        per_layer: Draw one set of ω per layer group.
        layer_std: With ``per_layer``: draw ω_i ~ N(mean, std²) once per parent and each group's
            ω_{i,g} = ω_i + layer_std · z_{i,g} around it (``None``: every group draws N(mean, std²)
            on its own, as the official code's per-layer option).
        scale: The scale s of the child's task vector (see :func:`draw_scale`).

    Returns:
        The :class:`CrossoverPlan`.

    Raises:
        ValueError: If ``per_layer`` without ``names``, ``layer_std`` without ``per_layer``, or the
            draws of a group sum to about zero (choose a larger ``mean`` or a smaller ``std``).
    """
    if per_layer:
        if names is None:
            raise ValueError("per-layer crossover needs the tensor names")
        groups = sorted({layer_group(n) for n in names}, key=_group_order)
    else:
        groups = ["all"]
    if layer_std is not None and not per_layer:
        raise ValueError("layer_std applies to per-layer crossover only; set per_layer as well")
    if layer_std is None:
        draws = torch.randn((len(groups), n_parents), generator=generator, dtype=torch.float64) * std + mean
    else:
        model_wise = torch.randn((1, n_parents), generator=generator, dtype=torch.float64) * std + mean
        around = torch.randn((len(groups), n_parents), generator=generator, dtype=torch.float64)
        draws = model_wise + around * layer_std
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
    return CrossoverPlan(weights=weights, omegas=omegas, per_layer=per_layer, scale=scale)


def draw_scale(*, generator: torch.Generator, std: float) -> float:
    """The scale of a child's task vector, s = exp(std · z) with z ~ N(0, 1) (log-normal, median 1).

    A log-normal scale is positive and symmetric in ratio (s and 1/s are equally likely), so a chain
    of crossovers performs a random walk in log-scale that selection can steer towards the strength
    of merge a skill mix needs (task arithmetic's best λ Σ is often well above 1). ``std = 0`` gives
    exactly 1 without drawing.

    Args:
        generator: Source of the draw (a stream of its own, so that other draws are unchanged).
        std: σ of log s.

    Returns:
        The scale.
    """
    if std == 0.0:
        return 1.0
    z = torch.randn((1,), generator=generator, dtype=torch.float64)
    return float(torch.exp(z * std))


@dataclass(frozen=True)
class MergeCrossover:
    """Crossover through a merge method of the library, with the drawn coefficients as the models' weights.

    ``linear`` (the paper's) is Σ_i c_i τ_i. A sparsifying method (``ties``, ``dare_ties``,
    ``dare_linear``) trims or drops entries of each parent's task vector and, for TIES, elects a sign
    per entry before the weighted sum, so a child can leave the plane its parents span. Per-model
    parameters of the method (``density``) apply to both parents; the method's ``normalize`` is off
    unless set, so that the drawn coefficients (and a drawn scale) keep their meaning.

    Attributes:
        method: A registered merge method (:data:`~cycleqd.operators.merge.MERGE_METHODS`).
        params: Its parameters by config name (``density``, ``lambda``, ``consensus`` ...).
    """

    method: str = "linear"
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_linear(self) -> bool:
        """Whether the crossover is the paper's weighted sum (no parameters)."""
        return self.method == "linear" and not self.params

    @property
    def seeded(self) -> bool:
        """Whether the method draws at random (a generator per tensor is then needed)."""
        return get_merge_method(self.method).seeded

    def __call__(
        self,
        parent_taus: Sequence[torch.Tensor],
        coefficients: Sequence[float],
        *,
        base: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Merge one tensor's task vectors.

        Args:
            parent_taus: The parents' task vectors (float32).
            coefficients: One drawn coefficient per parent.
            base: The base tensor, for methods that need it.
            generator: Seeded generator, for methods that draw.

        Returns:
            The child's task vector for this tensor (float32).
        """
        if self.is_linear:
            return linear(parent_taus, weights=coefficients, normalize=False)
        method = get_merge_method(self.method)
        n = len(parent_taus)
        per_model: dict[str, Sequence[Any]] = {"weight": list(coefficients)}
        values: dict[str, Any] = {"normalize": False} if "normalize" in method.params else {}
        for key, value in self.params.items():
            if key in method.model_params:
                per_model[key] = [value] * n
            else:
                values[key] = value
        return method(parent_taus, base=base, generator=generator, model_values=per_model, values=values)

    def describe(self) -> dict[str, Any]:
        """JSON-ready form (recorded with the child's mutation settings)."""
        return {"method": self.method, "params": dict(self.params)}


LINEAR = MergeCrossover()
"""The paper's crossover."""


def crossover_tensor(
    name: str,
    parent_taus: Sequence[torch.Tensor],
    plan: CrossoverPlan,
    *,
    merge: MergeCrossover = LINEAR,
    base: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply a crossover plan to one tensor: Σ_i c_i τ_i, or a merge method with those weights.

    Args:
        name: Tensor name (selects the layer group).
        parent_taus: The parents' task vectors for this tensor.
        plan: The drawn coefficients.
        merge: How the task vectors are combined (default: the weighted sum).
        base: The base tensor, for merge methods that need it.
        generator: Seeded generator, for merge methods that draw.

    Returns:
        The child's task vector for this tensor, float32.
    """
    return merge(parent_taus, plan.weights_for(name), base=base, generator=generator)


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
