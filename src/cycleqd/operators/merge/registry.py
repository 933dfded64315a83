"""The registry of merge methods: name → per-tensor function plus the parameters it takes.

Every method is a plain function over the task vectors of one tensor (float32, one per model besides
the base) that returns the merged task vector; the merged weights are θ0 + τ. Per-model parameters
arrive as sequences (``weights``, ``densities``), global ones as scalars; ``base`` (the base tensor) and
``generator`` (a seeded ``torch.Generator``) are passed to methods that declare them. Parameter names
in configs follow mergekit (``weight``, ``density``, ``lambda``, ``normalize``, ``t`` ...); the
function's keyword is the same except ``weight`` → ``weights``, ``density`` → ``densities`` and
``lambda`` → ``scale``.

A new method is one function in its own module and one line in :data:`MERGE_METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cycleqd.errors import ConfigError
from cycleqd.operators.merge.dare import dare_linear, dare_ties
from cycleqd.operators.merge.iso import iso_c, iso_cts
from cycleqd.operators.merge.linear import linear_soup, linear_soup_coefficients
from cycleqd.operators.merge.slerp import slerp
from cycleqd.operators.merge.task_arithmetic import task_arithmetic, task_arithmetic_coefficients
from cycleqd.operators.merge.ties import ties
from cycleqd.operators.merge.tsv import tsv_m

REQUIRED: Any = object()
"""Default of a parameter that has none: a config must set it."""

KEYWORDS: Mapping[str, str] = {"weight": "weights", "density": "densities", "lambda": "scale"}
"""Config parameter name → function keyword, where they differ."""


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes:
        name: Registry name (mergekit's where mergekit has the method).
        fn: The per-tensor function.
        model_params: Per-model parameters and their defaults (``weight``, ``density``).
        params: Global parameters and their defaults (:data:`REQUIRED` for none). A parameter's type
            is its default's: ``true``/``false`` for a boolean default, one of :attr:`choices` for a
            word, a number (or a gradient of numbers) otherwise and for :data:`REQUIRED`.
        choices: The words a word-valued parameter may take (``consensus: [sum, count]``).
        needs_base: Whether ``fn`` takes the base tensor (``base=``).
        base_member: How a merge config's base model is used: ``False`` (most methods), it is the
            origin of the task vectors, required, and its entry among the models is skipped (as
            mergekit does); ``True`` (a weighted average), it is one more model of the average, and
            without one the first model stands in.
        seeded: Whether ``fn`` takes a generator (``generator=``).
        n_models: The exact number of models besides the base, when the method fixes it.
        ignored: Parameters accepted for mergekit compatibility that change nothing here, with a
            default that gives their type.
        summary: One line for listings.
        reference: The paper.
        coefficients: For methods linear in the models, a function of the same parameters (without
            the tensors) returning (c0, [c_i]) with merged weights θ = c0 θ0 + Σ_i c_i θ_i. The
            streamer then combines weights in one pass per model instead of forming task vectors;
            ``fn`` stays the definition and the two agree up to float rounding.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    model_params: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    needs_base: bool = False
    base_member: bool = False
    seeded: bool = False
    n_models: int | None = None
    ignored: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    reference: str = ""
    coefficients: Callable[..., tuple[float, list[float]]] | None = None

    def default(self, key: str) -> Any:
        """The default of a parameter (per-model, global or ignored)."""
        for scope in (self.model_params, self.params, self.ignored):
            if key in scope:
                return scope[key]
        raise KeyError(f"{self.name} has no parameter {key!r}")

    @property
    def parameter_names(self) -> list[str]:
        """Every parameter name a config may set (per-model ones may also be set globally)."""
        return sorted({*self.model_params, *self.params, *self.ignored})

    def __call__(
        self,
        taus: Sequence[torch.Tensor],
        *,
        base: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        model_values: Mapping[str, Sequence[Any]] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """Merge the task vectors of one tensor.

        Args:
            taus: Task vectors (float32), one per model besides the base.
            base: The base tensor (float32); required when :attr:`needs_base`.
            generator: Seeded generator; required when :attr:`seeded`.
            model_values: Per-model parameter values by config name, one entry per model; missing
                names take their defaults.
            values: Global parameter values by config name; missing names take their defaults.

        Returns:
            The merged task vector (float32).

        Raises:
            ValueError: When a required input or parameter is missing.
        """
        kwargs = self._kwargs(len(taus), model_values, values)
        if self.needs_base:
            if base is None:
                raise ValueError(f"{self.name} merge needs the base tensor")
            kwargs["base"] = base
        if self.seeded:
            if generator is None:
                raise ValueError(f"{self.name} merge draws at random and needs a generator")
            kwargs["generator"] = generator
        return self.fn(taus, **kwargs)

    def weight_coefficients(
        self,
        n_models: int,
        *,
        model_values: Mapping[str, Sequence[Any]] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> tuple[float, list[float]] | None:
        """(c0, [c_i]) with θ = c0 θ0 + Σ_i c_i θ_i, for methods linear in the models; else ``None``.

        Args:
            n_models: Number of models besides the base.
            model_values: As for :meth:`__call__`.
            values: As for :meth:`__call__`.

        Returns:
            The coefficients, or ``None`` when the method is not linear.
        """
        if self.coefficients is None:
            return None
        return self.coefficients(**self._kwargs(n_models, model_values, values))

    def _kwargs(
        self,
        n_models: int,
        model_values: Mapping[str, Sequence[Any]] | None,
        values: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        model_values = model_values or {}
        values = values or {}
        kwargs: dict[str, Any] = {}
        for key, default in self.model_params.items():
            kwargs[KEYWORDS.get(key, key)] = list(model_values.get(key, [default] * n_models))
        for key, default in self.params.items():
            value = values.get(key, default)
            if value is REQUIRED:
                raise ValueError(f"{self.name} merge needs the parameter {key!r}")
            kwargs[KEYWORDS.get(key, key)] = value
        return kwargs


_GTA_IGNORED: Mapping[str, Any] = {"int8_mask": False}
_CONSENSUS = {"consensus": ("sum", "count")}

MERGE_METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in [
        MergeMethod(
            name="linear",
            fn=linear_soup,
            model_params={"weight": 1.0},
            params={"normalize": True},
            needs_base=True,
            base_member=True,
            coefficients=linear_soup_coefficients,
            summary="weighted average of the models' weights",
            reference="Wortsman et al., Model soups, ICML 2022",
        ),
        MergeMethod(
            name="task_arithmetic",
            fn=task_arithmetic,
            model_params={"weight": 1.0},
            params={"normalize": False, "lambda": 1.0},
            ignored={**_GTA_IGNORED, "density": 1.0, "rescale": True},
            coefficients=task_arithmetic_coefficients,
            summary="λ Σ w_i τ_i",
            reference="Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023",
        ),
        MergeMethod(
            name="ties",
            fn=ties,
            model_params={"weight": 1.0, "density": 1.0},
            params={"normalize": True, "lambda": 1.0, "consensus": "sum"},
            choices=_CONSENSUS,
            ignored=_GTA_IGNORED,
            summary="trim by magnitude, elect sign, disjoint mean",
            reference="Yadav et al., TIES-Merging, NeurIPS 2023",
        ),
        MergeMethod(
            name="dare_linear",
            fn=dare_linear,
            model_params={"weight": 1.0, "density": 1.0},
            params={"normalize": False, "lambda": 1.0, "rescale": True},
            seeded=True,
            ignored=_GTA_IGNORED,
            summary="random drop and rescale, then λ Σ w_i τ_i",
            reference="Yu et al., Language Models are Super Mario, ICML 2024",
        ),
        MergeMethod(
            name="dare_ties",
            fn=dare_ties,
            model_params={"weight": 1.0, "density": 1.0},
            params={"normalize": False, "lambda": 1.0, "rescale": True, "consensus": "sum"},
            choices=_CONSENSUS,
            seeded=True,
            ignored=_GTA_IGNORED,
            summary="random drop and rescale, then TIES sign election",
            reference="Yu et al., ICML 2024; Yadav et al., NeurIPS 2023",
        ),
        MergeMethod(
            name="slerp",
            fn=slerp,
            params={"t": REQUIRED},
            needs_base=True,
            n_models=1,
            summary="spherical interpolation between the base and one model",
            reference="Shoemake, SIGGRAPH 1985",
        ),
        MergeMethod(
            name="tsv_m",
            fn=tsv_m,
            model_params={"weight": 1.0},
            params={"lambda": 1.0},
            summary="task singular vectors, orthogonalised (SVD, matrices only)",
            reference="Gargiulo et al., Task Singular Vectors, CVPR 2025",
        ),
        MergeMethod(
            name="iso_c",
            fn=iso_c,
            model_params={"weight": 1.0},
            params={"lambda": 1.0},
            summary="task-arithmetic sum with a flat singular spectrum",
            reference="Marczak et al., No Task Left Behind, ICML 2025",
        ),
        MergeMethod(
            name="iso_cts",
            fn=iso_cts,
            model_params={"weight": 1.0},
            params={"lambda": 1.0, "common_space_fraction": 0.8},
            summary="common plus task-specific subspaces with a flat spectrum",
            reference="Marczak et al., No Task Left Behind, ICML 2025",
        ),
    ]
}
"""Every merge method by name."""


def get_merge_method(name: str | MergeMethod) -> MergeMethod:
    """Look up a merge method.

    Args:
        name: A registry name, or a :class:`MergeMethod` (returned as is).

    Returns:
        The method.

    Raises:
        ConfigError: For an unknown name, listing the valid ones.
    """
    if isinstance(name, MergeMethod):
        return name
    try:
        return MERGE_METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown merge method {name!r}; choose one of {', '.join(MERGE_METHODS)}"
        ) from None


def check_parameter(method: MergeMethod, key: str, value: Any, *, per_model: bool) -> str | None:
    """What is wrong with one parameter setting for a method, or ``None`` when it is fine.

    Checks the name (per-model settings accept only the method's per-model parameters) and the type
    of every value in the setting (numbers, booleans for flags, a listed word for ``consensus``).

    Args:
        method: The merge method.
        key: Parameter name.
        value: Its setting (scalar, gradient or filter list).
        per_model: Whether it is set for one model (rather than globally).

    Returns:
        A message, or ``None``.
    """
    allowed = set(method.model_params) | (set() if per_model else set(method.params)) | set(method.ignored)
    if key not in allowed:
        scope = "per-model parameter" if per_model else "parameter"
        valid = ", ".join(sorted(allowed)) or "none"
        return f"{method.name} has no {scope} {key!r}; valid: {valid}"
    default = method.default(key)
    for leaf in _leaves(value):
        if isinstance(default, bool):
            if not isinstance(leaf, bool):
                return f"{key} must be true or false, got {leaf!r}"
        elif isinstance(default, str):
            words = method.choices.get(key, (default,))
            if leaf not in words:
                return f"{key} must be one of {', '.join(words)}, got {leaf!r}"
        elif isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
            return f"{key} must be a number (or a list of numbers for a gradient), got {leaf!r}"
    return None


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, Mapping):
        return _leaves(value.get("value"))
    if hasattr(value, "value") and hasattr(value, "filter"):
        return _leaves(value.value)
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]
