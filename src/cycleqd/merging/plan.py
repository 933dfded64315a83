"""A merge plan: the config's models found, opened and checked, their parameters resolved.

Nothing is merged here; :func:`prepare_merge` fails with a message naming the field before any tensor
is read, and :func:`describe` summarises a plan for the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cycleqd.config_files import locate_model
from cycleqd.errors import ConfigError, ModelMismatchError
from cycleqd.merging.config import MergeConfig, _plain, parse_size
from cycleqd.operators.merge import get_merge_method
from cycleqd.operators.merge.params import count_layers
from cycleqd.weights import ModelSource, open_model, validate_models
from cycleqd.weights.validate import structure_problems


@dataclass
class MergePlan:
    """A checked merge, ready to run: opened models and resolved settings.

    Attributes:
        config: The config it came from.
        base: The base model (the reference θ0 of the task vectors).
        models: The other models, in config order.
        model_parameters: Their per-model settings.
        parameters: Global settings.
        out_dtype: Dtype of the output's floating-point tensors (``None`` keeps the base's).
        shard_size: Output shard size in bytes.
        notes: Remarks for the user (ignored parameters and the like).
    """

    config: MergeConfig
    base: ModelSource
    models: list[ModelSource]
    model_parameters: list[dict[str, Any]]
    parameters: dict[str, Any]
    out_dtype: torch.dtype | None
    shard_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def n_tensors(self) -> int:
        """Number of tensors the output will have."""
        return len(self.base)

    @property
    def inputs(self) -> list[ModelSource]:
        """The base and the other models."""
        return [self.base, *self.models]


def _locate(value: str, root: Path, where: str) -> str:
    return locate_model(value, root=root, where=where, search_cwd=True)


def _check_models(base: ModelSource, models: list[ModelSource], *, check_finite: bool) -> None:
    others = list({id(m): m for m in models if m is not base}.values())
    if check_finite:
        validate_models(base, others, check_finite=True)
        return
    # Headers only: the full scan of validate_models reads and hashes every tensor.
    problems = [p for m in others for p in structure_problems(base, m, role="model")]
    if problems:
        raise ModelMismatchError("\n".join(problems))


def prepare_merge(
    config: MergeConfig, *, root: str | Path = ".", out_dir: str | Path | None = None
) -> MergePlan:
    """Resolve paths, open every model and check that they can be merged; nothing is merged yet.

    The base and models must share architecture, tensor names and shapes (read from the headers);
    with ``check_finite`` every tensor is also scanned for NaN and Inf.

    Args:
        config: A validated config.
        root: The config's folder (paths are tried relative to the working directory first).
        out_dir: The output folder, refused when it is one of the inputs.

    Returns:
        The :class:`MergePlan`.

    Raises:
        ConfigError: For a missing path, a wrong number of models, or an output folder that is an input.
        ModelLoadError: When a model cannot be read.
        ModelMismatchError: When the models do not match the base.
    """
    method = get_merge_method(config.merge_method)
    root = Path(root)
    kind = "slices[0].sources" if config.slices else "models"
    entries = [(e, _locate(e.model, root, f"{kind}[{i}].model")) for i, e in enumerate(config.entries())]
    base_path = _locate(config.base_model, root, "base_model") if config.base_model else entries[0][1]
    notes = [
        f"parameter {k} is accepted for mergekit compatibility and has no effect here"
        for k in sorted(
            {*config.global_parameters(), *(k for e in config.entries() for k in (e.parameters or {}))}
            & set(method.ignored)
        )
    ]

    inputs: list[tuple[str, dict[str, Any]]] = []
    base_listed = any(path == base_path for _, path in entries)
    for entry, path in entries:
        if path == base_path and not method.base_member:
            continue  # mergekit ignores the base's entry (and its parameters) except in an average
        inputs.append((path, {k: _plain(v) for k, v in (entry.parameters or {}).items()}))
    if method.base_member and config.base_model and not base_listed:
        inputs.append((base_path, {}))  # mergekit adds the base as one more input of an average
        notes.append(f"{method.name}: base_model is not in models, so it is averaged in like mergekit does")
    if not inputs:
        raise ConfigError(f"{kind}: no model to merge besides the base {config.base_model}")
    if method.n_models is not None and len(inputs) != method.n_models:
        raise ConfigError(
            f"{kind}: {method.name} merges the base with exactly {method.n_models} other model(s), got "
            f"{len(inputs)}; list the base and {method.n_models} model(s)"
        )
    if out_dir is not None:
        out = Path(out_dir).expanduser().resolve()
        for path in {base_path, *(p for p, _ in inputs)}:
            if Path(path).exists() and Path(path).resolve() in (out, *out.parents):
                raise ConfigError(
                    f"--out {out_dir} is the input model {path} or lies inside it; choose a new folder"
                )

    # One source per distinct path: a model listed twice (or the base listed as a model) is mapped once.
    sources: dict[str, ModelSource] = {}
    for path in [base_path, *(p for p, _ in inputs)]:
        if path not in sources:
            sources[path] = open_model(path, name=_label(path, len(sources)))
    base = sources[base_path]
    models = [sources[p] for p, _ in inputs]
    _check_models(base, models, check_finite=config.check_finite)
    if config.slices:
        depth = count_layers(list(base), base.config)
        end = config.slices[0].sources[0].layer_range[1]
        if end != depth:
            raise ConfigError(
                f"slices[0].sources: layer_range ends at {end} but the models have {depth} layers; only "
                f"whole-model merges are supported (use [0, {depth}])"
            )
    return MergePlan(
        config=config,
        base=base,
        models=models,
        model_parameters=[p for _, p in inputs],
        parameters=config.global_parameters(),
        out_dtype=config.output_dtype(),
        shard_size=parse_size(config.shard_size),
        notes=notes,
    )


def _label(path: str, index: int) -> str:
    return f"{Path(path).name or path}#{index}"


def describe(plan: MergePlan) -> Mapping[str, Any]:
    """A short summary of a plan for the command line.

    Args:
        plan: The plan.

    Returns:
        Method, base, models and output dtype.
    """
    return {
        "method": plan.config.merge_method,
        "base": str(plan.base.path),
        "models": [str(m.path) for m in plan.models],
        "out_dtype": str(plan.out_dtype).removeprefix("torch.") if plan.out_dtype else "as base",
    }
