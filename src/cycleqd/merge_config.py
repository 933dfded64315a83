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

import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from cycleqd.errors import ConfigError, ModelMismatchError
from cycleqd.operators.merge import MERGE_METHODS, get_merge_method, merge_models
from cycleqd.operators.merge.params import count_layers
from cycleqd.operators.merge.registry import REQUIRED, check_parameter
from cycleqd.validation import validation_lines
from cycleqd.weights import ModelSource, open_model, save_model, validate_models
from cycleqd.weights.dtypes import parse_dtype
from cycleqd.weights.source import HUB_PREFIX
from cycleqd.weights.validate import structure_problems

Scalar = bool | int | float | str
T = TypeVar("T")
R = TypeVar("R")
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
        try:
            parse_dtype(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v

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


def format_errors(exc: ValidationError, *, source: str) -> str:
    """One line per problem, naming the field (and, for an unknown one, the valid fields).

    Args:
        exc: The pydantic error.
        source: The config file, for the message.

    Returns:
        A readable multi-line message.
    """
    lines = validation_lines(exc, model=MergeConfig)
    return "\n".join([f"{source} is not a valid merge config:", *(f"  {ln}" for ln in lines)])


def load_merge_config(path: str | Path) -> MergeConfig:
    """Read and validate a merge config file (nothing is merged or opened).

    Args:
        path: The YAML file.

    Returns:
        The config.

    Raises:
        ConfigError: When the file is missing, not YAML, or invalid; the message names each field.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"merge config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping (merge_method, base_model, models, ...)")
    try:
        return MergeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source=str(path))) from None


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
    if value.startswith(HUB_PREFIX):
        return value
    p = Path(value).expanduser()
    for candidate in (p, root / p) if not p.is_absolute() else (p,):
        if candidate.exists():
            return str(candidate.resolve())
    if "+" in value:
        raise ConfigError(
            f"{where}: {value} does not exist; LoRA references (model+lora) are not supported, merge the "
            "adapter into the model first"
        )
    if value.count("/") == 1 and not value.startswith((".", "/", "~")):
        # mergekit files name Hub models bare (org/name): kept for them, as an explicit hub id.
        return HUB_PREFIX + value
    raise ConfigError(f"{where}: model path {value} does not exist (looked in {Path.cwd()} and {root})")


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


def _check_models(base: ModelSource, models: list[ModelSource], *, check_finite: bool) -> None:
    others = list({id(m): m for m in models if m is not base}.values())
    if check_finite:
        validate_models(base, others, check_finite=True)
        return
    # Headers only: the full scan of validate_models reads and hashes every tensor.
    problems = [p for m in others for p in structure_problems(base, m, role="model")]
    if problems:
        raise ModelMismatchError("\n".join(problems))


def run_merge(
    plan: MergePlan,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    on_tensor: Callable[[str], None] | None = None,
) -> Path:
    """Merge and write the result as a Hugging Face folder, streaming tensor by tensor.

    Config, tokenizer and generation files are copied from the base; ``config.json`` gets the output
    dtype. The folder appears atomically when complete.

    Args:
        plan: A checked plan from :func:`prepare_merge`.
        out_dir: Destination folder (replaced when it exists).
        device: Where the arithmetic runs (``cpu`` or ``cuda``).
        on_tensor: Called with each tensor name once it is merged (for progress bars).

    Returns:
        The output folder.
    """
    cfg = plan.config
    tensors = merge_models(
        plan.base,
        plan.models,
        method=cfg.merge_method,
        parameters=plan.parameters,
        model_parameters=plan.model_parameters,
        seed=cfg.seed,
        out_dtype=plan.out_dtype,
        device=device,
        release_inputs=True,
    )

    def reported() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in tensors:
            yield name, tensor
            if on_tensor is not None:
                on_tensor(name)

    metadata = {"merged_by": "cycleqd", "merge_method": cfg.merge_method}

    def write(items: Iterator[tuple[str, torch.Tensor]]) -> Path:
        return save_model(
            items,
            out_dir,
            template=plan.base,
            dtype=plan.out_dtype,
            max_shard_bytes=plan.shard_size,
            metadata=metadata,
        )

    out = consume_in_background(reported(), write, depth=2)
    dumped = cfg.model_dump(exclude_defaults=True, mode="json")
    (Path(out) / "cycleqd_merge.yaml").write_text(yaml.safe_dump(dumped, sort_keys=False))
    return Path(out)


_DONE = object()
_ABORT = object()


class _AbortedError(Exception):
    """Raised inside the writer when the producer failed, so that it cleans up."""


def consume_in_background(items: Iterable[T], consume: Callable[[Iterator[T]], R], *, depth: int) -> R:
    """Run ``consume(iterator)`` in a background thread while this thread produces the items.

    The merge computes tensors on the calling thread (so its large allocations come from the main
    heap, which the allocator reuses) while the writer stores earlier ones; torch and safetensors
    release the GIL, so the two overlap. At most ``depth`` items wait in between.

    Args:
        items: Produced on the calling thread.
        consume: Called once, in the background, with an iterator over the items.
        depth: Items buffered at most.

    Returns:
        What ``consume`` returned.

    Raises:
        BaseException: Whatever the producer or ``consume`` raised; when the producer fails,
            ``consume`` sees an exception from its iterator (so it can clean up) before this re-raises.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    outcome: dict[str, Any] = {}

    def drain() -> Iterator[T]:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if item is _ABORT:
                raise _AbortedError("the merge stopped before the last tensor")
            yield item

    def work() -> None:
        try:
            outcome["value"] = consume(drain())
        except BaseException as exc:  # re-raised on the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="merge-writer", daemon=True)
    worker.start()

    def put(item: Any) -> None:
        while worker.is_alive():
            try:
                buffer.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    try:
        for item in items:
            if not worker.is_alive():
                break
            put(item)
        put(_DONE)
    except BaseException:
        put(_ABORT)
        worker.join()
        raise
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


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
