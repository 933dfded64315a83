"""The merge config of ``cycleqd merge``: a mergekit-style YAML, checked before any merging starts.

The core reads like mergekit's, so a mergekit config that uses only supported features works as is::

    merge_method: ties
    base_model: ./base
    models:
      - model: ./expert-a
        parameters: {weight: 0.6, density: 0.5}
      - model: ./expert-b
        parameters: {weight: 0.4, density: [0.3, 0.7]}   # a gradient over depth
    parameters: {normalize: true, lambda: 1.0, int8_mask: true}
    dtype: float32
    out_dtype: bfloat16
    # cycleqd's own keys:
    seed: 0               # random methods (dare_*)
    shard_size: 5GB       # output shard size
    check_finite: false   # scan every model for NaN/Inf first

Supported from mergekit: ``models`` (or ``slices`` with one slice whose sources all cover every
layer), ``base_model``, ``merge_method`` (see :data:`~cycleqd.operators.merge.MERGE_METHODS`),
``parameters`` globally, per model and per slice, in scalar, gradient and filter forms, ``dtype``,
``out_dtype`` and ``tokenizer_source: base``. Model paths are read relative to the working directory
(as mergekit does) or, failing that, to the config's folder.

Differences: arithmetic is always float32 (mergekit computes in ``dtype``); ``dtype`` only sets the
output dtype when ``out_dtype`` is absent. ``int8_mask`` is accepted and has no effect (masks are
boolean here). ``weight`` defaults to 1 where mergekit requires it. DARE's ``rescale`` divides by the
density as in the paper (recent mergekit matches the L1 norm instead); draws are seeded by ``seed``.
Not supported: multi-slice or partial-layer merges, ``modules``, LoRA references (``model+lora``), hub
revisions, tokenizer unions and ``chat_template``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from cycleqd.config_files import check_dtype_name, invalid_message, read_mapping
from cycleqd.errors import ConfigError
from cycleqd.operators.merge import MERGE_METHODS, get_merge_method
from cycleqd.operators.merge.registry import REQUIRED, check_parameter
from cycleqd.weights.dtypes import parse_dtype

Scalar = bool | int | float | str


SHARD_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConditionalSetting(_Strict):
    """One entry of a filtered setting: ``{filter: self_attn, value: 0.5}``."""

    filter: str | None = None
    value: Scalar | list[Scalar]


Setting = Scalar | list[Scalar] | ConditionalSetting | list[ConditionalSetting]


class ModelEntry(_Strict):
    """One model of ``models``: its path and per-model parameters (``weight``, ``density``)."""

    model: str
    parameters: dict[str, Setting] | None = None


class SliceSource(_Strict):
    """One source of a slice (mergekit's ``slices`` form)."""

    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Setting] | None = None


class SliceEntry(_Strict):
    """A slice (mergekit form); only a single slice over all layers is supported."""

    sources: list[SliceSource]
    parameters: dict[str, Setting] | None = None


class MergeConfig(_Strict):
    """A validated merge config (see the module docstring for the fields)."""

    merge_method: str
    models: list[ModelEntry] | None = None
    slices: list[SliceEntry] | None = None
    base_model: str | None = None
    parameters: dict[str, Setting] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    seed: int = 0
    shard_size: int | str = "5GB"
    check_finite: bool = False

    @field_validator("merge_method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in MERGE_METHODS:
            raise ValueError(f"unknown merge method {v!r}; choose one of {', '.join(MERGE_METHODS)}")
        return v

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        return check_dtype_name(v)

    @field_validator("shard_size")
    @classmethod
    def _shard(cls, v: int | str) -> int | str:
        parse_size(v)
        return v

    @field_validator("tokenizer_source")
    @classmethod
    def _tokenizer(cls, v: str | None) -> str | None:
        if v not in (None, "base"):
            raise ValueError(
                "only 'base' is supported (the merged model gets the base's tokenizer); remove the field "
                "or set it to base"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MergeConfig:
        method = get_merge_method(self.merge_method)
        problems: list[str] = []
        if bool(self.models) == bool(self.slices):
            problems.append("give exactly one of models or slices (models is the usual form)")
        if self.slices:
            if len(self.slices) != 1:
                problems.append(
                    f"slices: {len(self.slices)} slices given; only one slice covering every layer is "
                    "supported (use models: to merge whole models)"
                )
            else:
                ranges = {tuple(s.layer_range) for s in self.slices[0].sources}
                if len(ranges) != 1 or next(iter(ranges))[0] != 0:
                    problems.append(
                        "slices[0].sources: every source must have the same layer_range starting at 0 "
                        "(whole-model merges only)"
                    )
        if self.base_model is None and not method.base_member:
            problems.append(f"base_model: required by {method.name} (the model the task vectors start from)")
        scopes: list[tuple[str, dict[str, Any] | None, bool]] = [("parameters", self.parameters, False)]
        if self.slices:
            scopes.append(("slices[0].parameters", self.slices[0].parameters, False))
        for i, entry in enumerate(self.entries()):
            where = f"slices[0].sources[{i}]" if self.slices else f"models[{i}]"
            scopes.append((f"{where}.parameters", entry.parameters, True))
        for where, params, per_model in scopes:
            for key, value in (params or {}).items():
                problem = check_parameter(method, key, _plain(value), per_model=per_model)
                if problem:
                    problems.append(f"{where}.{key}: {problem}")
        for key, default in method.params.items():
            if default is REQUIRED and key not in self.global_parameters():
                problems.append(f"parameters.{key}: required by {method.name}")
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def entries(self) -> list[ModelEntry]:
        """The input models in the ``models`` form (slice sources converted)."""
        if self.models:
            return list(self.models)
        if self.slices:
            return [ModelEntry(model=s.model, parameters=s.parameters) for s in self.slices[0].sources]
        return []

    def global_parameters(self) -> dict[str, Any]:
        """Global settings: top-level ``parameters`` overridden by the slice's."""
        params = {k: _plain(v) for k, v in (self.parameters or {}).items()}
        if self.slices and self.slices[0].parameters:
            params.update({k: _plain(v) for k, v in self.slices[0].parameters.items()})
        return params

    def output_dtype(self) -> torch.dtype | None:
        """``out_dtype``, else ``dtype``, else ``None`` (keep the base's dtype per tensor)."""
        return parse_dtype(self.out_dtype) or parse_dtype(self.dtype)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parse_size(value: int | str) -> int:
    """A byte count from an integer or a string such as ``5GB``, ``500MB`` or ``2GiB``.

    Args:
        value: The size.

    Returns:
        Bytes.

    Raises:
        ValueError: For a malformed or non-positive size.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in SHARD_UNITS:
            raise ValueError(f"size {value!r} is not a byte count; write it like 5GB, 500MB or 2GiB")
        n = int(float(m.group(1)) * SHARD_UNITS[unit])
    if n <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return n


def load_merge_config(path: str | Path) -> MergeConfig:
    """Read and validate a merge config file (nothing is merged or opened).

    Args:
        path: The YAML file.

    Returns:
        The config.

    Raises:
        ConfigError: When the file is missing, not YAML, or invalid; the message names each field.
    """
    raw = read_mapping(path, what="merge config", fields="merge_method, base_model, models, ...")
    try:
        return MergeConfig.model_validate(raw)
    except ValidationError as exc:
        message = invalid_message(exc, source=str(path), model=MergeConfig, what="merge config")
        raise ConfigError(message) from None
