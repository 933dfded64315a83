"""The run configuration: one YAML file, validated with pydantic before any work starts.

Unknown fields are errors; every error names the field (``mutation.rho``) and what is expected.
Relative paths are resolved against the folder of the YAML file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cycleqd.config_files import check_dtype_name, invalid_message, locate_model, read_mapping
from cycleqd.config_kinds import KindSection, changed_fields, keyword_settings, kind_section
from cycleqd.errors import ConfigError
from cycleqd.evaluation.spec import EvaluationSpec, TaskSpec
from cycleqd.operators.mutation.registry import MUTATIONS
from cycleqd.presets import apply_preset
from cycleqd.qd.selection import SELECTIONS, check_rule_settings
from cycleqd.weights.source import HUB_PREFIX


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(_Strict):
    """The base model and one expert per task.

    Attributes:
        base: Folder, weights file or hub id (``hf:org/name``) of the base model θ0.
        experts: Task name → folder, file or hub id (``hf:org/name``) of the expert fine-tuned for it.
        dtype: Storage dtype of children and the aggregate (``float32``, ``bfloat16``, ``float16``,
            ``auto`` = the base's).
        check_finite: Scan base and experts for NaN/Inf before the run.
        durable_writes: Flush each elite's weights to disk before the checkpoint that refers to them
            (survives a power loss; costs a full disk write per elite). A killed process never needs
            it: the checkpoint itself is always flushed.
    """

    base: str
    experts: dict[str, str]
    dtype: str = "float32"
    check_finite: bool = True
    durable_writes: bool = False

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str | None:
        return check_dtype_name(v)


class ArchiveConfig(_Strict):
    """Archive grid.

    Attributes:
        bins: Bins per behaviour characteristic (paper: 15); at least 2.
        ranges: Explicit [low, high] per task, overriding the paper's rule for that task.
        low_factor: Paper's rule: low = low_factor × weakest expert's score.
        high_factor: Paper's rule: high = high_factor × strongest expert's score.
    """

    bins: int = Field(15, le=1000)
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    low_factor: float = Field(0.85, ge=0.0)
    high_factor: float = Field(1.15, ge=0.0)

    @field_validator("bins")
    @classmethod
    def _bins(cls, v: int) -> int:
        if v < 2:
            raise ValueError(
                f"must be at least 2, got {v}: with one bin each archive holds a single model, so the "
                "search keeps no diversity; the paper uses 15"
            )
        return v

    @model_validator(mode="after")
    def _factors(self) -> ArchiveConfig:
        if self.low_factor > self.high_factor:
            raise ValueError(
                f"low_factor ({self.low_factor}) must not exceed high_factor ({self.high_factor}); "
                "the paper uses 0.85 and 1.15"
            )
        return self

    @field_validator("ranges")
    @classmethod
    def _ranges(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for task, (lo, hi) in v.items():
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"range of {task} must satisfy 0 <= low < high <= 1, got [{lo}, {hi}]")
        return v


def _check_selection(method: str, settings: BaseModel) -> None:
    check_rule_settings(method, settings.model_dump())


SelectionConfig = kind_section(
    "SelectionConfig",
    key="method",
    what="selection rule",
    settings={name: keyword_settings(rule, what="selection rule") for name, rule in SELECTIONS.items()},
    default="elite",
    check=_check_selection,
    doc="""Parent selection: a rule of :data:`~cycleqd.qd.selection.SELECTIONS` and its settings.

    ``elite`` (paper's elite sampling, ``alpha_low`` 0.5, ``alpha_high`` 0.8) or ``uniform``
    (ablation, no settings).
    """,
)


def _merge_method(name: str, params: dict[str, Any]) -> Any:
    """The registered merge method ``name``, with ``params`` checked against it.

    Raises:
        ValueError: For an unknown method or a parameter it does not take (or of the wrong type).
    """
    from cycleqd.operators.merge import MERGE_METHODS
    from cycleqd.operators.merge.registry import check_parameter

    method = MERGE_METHODS.get(name)
    if method is None:
        raise ValueError(f"method: unknown merge method {name!r}; choose one of {', '.join(MERGE_METHODS)}")
    for key, value in params.items():
        problem = check_parameter(method, key, value, per_model=False)
        if problem is not None:
            raise ValueError(f"params: {problem}")
    return method


class CrossoverConfig(_Strict):
    """Crossover ω ~ N(mean, std²) per parent (per layer group with ``per_layer``).

    Attributes:
        mean: μ of ω (official code: 1).
        std: σ of ω (official code: 0.01).
        per_layer: One draw per parent and layer group.
        layer_std: With ``per_layer``: each group's ω is the model-wise draw plus N(0, layer_std²), so
            layers spread around one model-wise balance (``null``: independent draws per group).
        scale_std: σ of log s, where the drawn scale s = exp(N(0, scale_std²)) multiplies the child's
            task vector, so coefficients need not sum to 1 (0: the paper's crossover).
        method: Merge method of the library that combines the parents' task vectors with the drawn
            weights (``linear`` is the paper's; ``ties``, ``dare_ties``, ``dare_linear`` sparsify).
        params: The method's parameters (``density``, ``lambda``, ``consensus`` ...).
    """

    mean: float = 1.0
    std: float = Field(0.01, ge=0.0)
    per_layer: bool = False
    layer_std: float | None = Field(None, ge=0.0)
    scale_std: float = Field(0.0, ge=0.0, le=2.0)
    method: str = "linear"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _away_from_zero(self) -> CrossoverConfig:
        # ω1 + ω2 ~ N(2μ, 2σ²) must stay away from 0, or the normalised weights explode.
        spread = (self.std**2 + (self.layer_std or 0.0) ** 2) ** 0.5
        if abs(self.mean) <= 3 * spread or self.mean == 0:
            raise ValueError(
                f"mean ({self.mean}) must be more than 3 std ({spread:.3g}, layer_std included) away "
                "from 0, or the sum of the drawn weights can come close to 0; the official code uses "
                "mean 1, std 0.01"
            )
        if self.layer_std is not None and not self.per_layer:
            raise ValueError("layer_std applies to per-layer crossover; set per_layer: true as well")
        return self

    @model_validator(mode="after")
    def _method(self) -> CrossoverConfig:
        if "weight" in self.params:
            raise ValueError("params: weight is drawn by the crossover (mean, std); remove it")
        method = _merge_method(self.method, self.params)
        if method.n_models not in (None, 2):
            raise ValueError(
                f"method: {self.method} merges {method.n_models} model(s) with the base; "
                "a crossover merges two parents"
            )
        return self


class _MutationShared(KindSection):
    """The fields every mutation kind has.

    Attributes:
        kind: The mutation (narrowed to the registered kinds by :func:`kind_section`).
        skip: Regular expressions of tensor names never mutated (1-D tensors never are).
        svd_cache: Folder of the expert SVD cache (default: ``svd`` in the run folder).
    """

    kind: str = "svd-expert"
    skip: list[str] = Field(default_factory=lambda: ["norm"])
    svd_cache: str | None = None

    @field_validator("skip")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
        return v


MutationConfig = kind_section(
    "MutationConfig",
    key="kind",
    what="mutation",
    settings={kind: cls.Settings for kind, cls in MUTATIONS.items()},
    default="svd-expert",
    base=_MutationShared,
    doc="""Mutation of the child's task vector: a kind of :data:`~cycleqd.operators.MUTATIONS`.

    ``svd-expert`` (official code: ``rho``, ``rank``), ``svd-self`` (paper: ``low``, ``high``,
    ``randomized_above``, ``randomized_rank``), ``gaussian`` (ablation: ``sigma``) or ``none``;
    ``skip`` and ``svd_cache`` apply to every kind.
    """,
)


class AggregationConfig(_Strict):
    """Final aggregation θ0 + Σ_k softmax(f/T)_k τ_{e_k}."""

    temperature: float = Field(1.0, gt=0.0)


class SeedMerge(_Strict):
    """One merge of all the experts that the archives start with (beside the experts).

    Attributes:
        method: A merge method of the library (``linear`` is the average, ``task_arithmetic`` ...).
        params: Its parameters (``lambda``, ``density`` ...), the same for every expert.
    """

    method: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> SeedMerge:
        from cycleqd.operators.merge.registry import REQUIRED

        method = _merge_method(self.method, self.params)
        if method.n_models is not None:
            raise ValueError(
                f"{self.method} merges exactly {method.n_models} model(s); seeds merge every expert"
            )
        missing = [k for k, v in method.params.items() if v is REQUIRED and k not in self.params]
        if missing:
            raise ValueError(f"{self.method} needs the parameter(s) {', '.join(missing)}")
        return self


class DistillConfig(_Strict):
    """A learned merge the archives start with (``engine/distill.py``).

    Task arithmetic with one coefficient per expert and tensor group, fitted so that the merge
    reproduces each expert's greedy answers to its own task's validation prompts (no labels are read).

    Attributes:
        steps: Adam steps on the coefficients.
        lr: Adam's learning rate.
        start: Every coefficient's first value (task arithmetic with λ = ``start``).
        grouping: ``tensor`` (one coefficient per expert and tensor), ``layer`` (per decoder layer) or
            ``model`` (one λ per expert).
        batch_size: Answers per step, over all tasks (each task weighted alike).
        max_items: Validation prompts per task used (``null``: all).
        optional: When the run cannot learn the merge (a backend without a language model, a task
            without ``teacher_pairs``, less free memory than the fit needs), skip it with a note in
            the log and ``distill.json`` instead of refusing the run. The ``offplane`` preset sets it.
    """

    steps: int = Field(100, ge=1, le=100_000)
    lr: float = Field(0.01, gt=0.0, le=10.0)
    start: float = Field(0.5, ge=-10.0, le=10.0)
    grouping: Literal["tensor", "layer", "model"] = "tensor"
    batch_size: int = Field(96, ge=1)
    max_items: int | None = Field(None, ge=1)
    optional: bool = False


class InitConfig(_Strict):
    """How the archives start.

    Attributes:
        merges: Merges of the experts scored like children and offered to the archives after the
            experts (beyond the paper, which starts from the experts alone), so that evolution starts
            on the plateau cheap merges reach instead of climbing to it. Each costs one evaluation.
        distill: A learned merge offered after ``merges`` (``null``: none). It needs a language
            model and tasks that answer each item with one generation; it costs one generation per
            validation item of each expert, ``steps`` backward passes and one evaluation.
    """

    merges: list[SeedMerge] = Field(default_factory=list)
    distill: DistillConfig | None = None


class FinalConfig(_Strict):
    """How the run's recommended model is chosen at the end.

    The ``top_k`` elites by validation average, the soups of them and the aggregate are scored on the
    tasks' ``select`` split (disjoint from validation, which drove evolution, and from test); the best
    there is the recommendation, saved as ``final/``. Without a ``select`` split the choice is made on
    validation and the run says so.

    Attributes:
        top_k: Elites re-scored on select.
        soups: Weight averages of those elites offered as candidates (``engine/soup.py``):
            ``uniform`` (all ``top_k``) and ``greedy`` (best first, each kept if the soup's validation
            average does not drop; costs up to ``top_k - 1`` validation evaluations). ``[]`` offers
            the elites and the aggregate only.
    """

    top_k: int = Field(8, ge=1, le=1000)
    soups: list[Literal["uniform", "greedy"]] = Field(default_factory=lambda: ["uniform", "greedy"])

    @field_validator("soups")
    @classmethod
    def _distinct_soups(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each soup may be named once, got {v}")
        return v


class RunnerConfig(_Strict):
    """Where children are built and evaluated.

    Attributes:
        kind: ``local`` (this process) or ``ray``.
        address: Ray cluster address (``null`` or ``local`` starts a local cluster).
        workers: Number of Ray workers; also the number of jobs in flight.
        gpus_per_worker: GPUs each Ray worker reserves.
        cpus_per_worker: CPUs each Ray worker reserves.
        parent_cache: How many parents each process keeps open (memory-mapped, warm in the page cache).
        max_retries: Times a job is retried on another worker after its worker died.
        start_timeout_s: Seconds the Ray workers may take to be placed and to load their model.
    """

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    parent_cache: int = Field(4, ge=2)
    max_retries: int = Field(3, ge=0)
    start_timeout_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _ray_only(self) -> RunnerConfig:
        if self.kind == "ray":
            return self
        ignored = changed_fields(self, set(type(self).model_fields) - {"kind", "parent_cache"})
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)} apply to the ray runner, not to local (one job at a time in this "
                "process); remove them or set kind: ray"
            )
        return self


class RunConfig(_Strict):
    """A CycleQD run.

    Attributes:
        seed: Run seed; every draw of generation g derives from (seed, g).
        generations: Number of children to make (paper: 1200).
        stop_after_failures: Stop the run (resumable) when this many children in a row failed: a
            systematic error, such as a broken task, should not burn the whole budget.
        stop_without_signal: Stop before evolving, with a sample of the experts' outputs, when every
            expert scores 0 on every task (the evaluation does not fit the models). ``false`` only
            warns: for smoke tests with untrained models.
        cycle: Rotate the active task every generation; ``false`` keeps the first task (ablation).
        models: Base and experts.
        tasks: The skills, in archive order.
        evaluation: Backend and evaluation settings.
        archive: Grid settings.
        selection: Parent selection.
        crossover: Crossover settings.
        mutation: Mutation settings.
        aggregation: Final aggregation.
        init: Merges the archives start with beside the experts.
        final: How the recommended model is chosen.
        runner: Local or Ray.
        root: Folder where custom task modules (``module:Class``) are found; defaults to the config
            file's folder (the resolved config in a run folder records it).
        preset: A named preset (:data:`~cycleqd.presets.PRESETS`: ``paper``, ``offplane``) whose
            settings are the defaults under the file's own.
    """

    root: str | None = None
    preset: str | None = None
    seed: int = 0
    generations: int = Field(ge=0)
    stop_after_failures: int = Field(20, ge=1)
    stop_without_signal: bool = True
    cycle: bool = True
    models: ModelsConfig
    tasks: list[TaskSpec]
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    crossover: CrossoverConfig = Field(default_factory=CrossoverConfig)
    mutation: MutationConfig = Field(default_factory=MutationConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    final: FinalConfig = Field(default_factory=FinalConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        names = [t.name for t in self.tasks]
        if len(names) < 2:
            raise ValueError(
                "tasks: CycleQD needs at least two tasks (one archive per task, cells from the others)"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tasks: names must be unique, {', '.join(dupes)} repeated")
        missing = [n for n in names if n not in self.models.experts]
        extra = [n for n in self.models.experts if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"no expert for task(s) {', '.join(missing)}")
            if extra:
                parts.append(f"expert(s) {', '.join(extra)} match no task")
            raise ValueError(
                f"models.experts: {'; '.join(parts)}; give one expert per task, keyed by the task name"
            )
        unknown = [t for t in self.archive.ranges if t not in names]
        if unknown:
            raise ValueError(
                f"archive.ranges: unknown task(s) {', '.join(unknown)}; tasks are {', '.join(names)}"
            )
        return self

    @property
    def task_names(self) -> list[str]:
        """Task names in archive order."""
        return [t.name for t in self.tasks]


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, resolve and validate a run config.

    Args:
        path: The YAML file.
        overrides: Top-level keys replacing those of the file (used by the demo and tests).

    Returns:
        The validated config, with model and data paths made absolute.

    Raises:
        ConfigError: When the file is missing, not YAML, or not a valid config (the message lists
            every problem with its field).
    """
    path = Path(path)
    raw = read_mapping(path, fields="models, tasks, generations, ...")
    raw.update(overrides or {})
    return config_from_dict(raw, root=path.resolve().parent, source=str(path))


def config_from_dict(raw: dict[str, Any], *, root: Path, source: str = "config") -> RunConfig:
    """Validate a config given as a dict, resolving relative paths against ``root``.

    Args:
        raw: The config's fields.
        root: Folder relative paths are resolved against.
        source: Name used in messages.

    Returns:
        The validated config.

    Raises:
        ConfigError: When it is not valid.
    """
    raw = apply_preset(raw)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(invalid_message(exc, source=source, model=RunConfig)) from None
    cfg.models.base = locate_model(cfg.models.base, root=root, where="models.base")
    cfg.models.experts = {
        k: locate_model(v, root=root, where=f"models.experts.{k}") for k, v in cfg.models.experts.items()
    }
    if cfg.mutation.svd_cache:
        cfg.mutation.svd_cache = str((root / cfg.mutation.svd_cache).resolve())
    for task in cfg.tasks:
        if isinstance(task.data, str):
            task.data = str((root / task.data).resolve())
        elif isinstance(task.data, dict):
            task.data = {split: str((root / p).resolve()) for split, p in task.data.items()}
    cfg.root = str((root / cfg.root).resolve()) if cfg.root else str(root.resolve())
    return cfg


def check_model_paths(cfg: RunConfig) -> None:
    """Refuse local model paths that do not exist, before anything is loaded.

    Args:
        cfg: A validated config.

    Raises:
        ConfigError: Naming each missing path and its field.
    """
    problems = []
    entries = [("models.base", cfg.models.base)] + [
        (f"models.experts.{k}", v) for k, v in cfg.models.experts.items()
    ]
    for field_name, value in entries:
        if not value.startswith(HUB_PREFIX) and not Path(value).exists():
            problems.append(f"  {field_name}: {value} does not exist")
    if problems:
        raise ConfigError(
            "model paths not found:\n"
            + "\n".join(problems)
            + f"\nfix the paths in the config (relative ones are relative to its folder); a model of the "
            f"Hugging Face Hub is written {HUB_PREFIX}ORG/NAME"
        )


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (written to the run folder)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
