"""The ``tasks:`` and ``evaluation:`` sections of a run config, and builders of tasks and backends.

A config file has other sections (models, archive, ...) that belong to other layers;
:func:`load_eval_config` reads only these two. Everything is validated before any model is loaded:
unknown fields are errors that name the field, data files are read and checked, and each built-in task
checks its own ``params`` and items.

Example::

    tasks:
      - name: coding
        kind: python_code
        data: data/mbpp.jsonl          # items carry "split": "validation" | "test"
        params: {max_new_tokens: 384, timeout_s: 5}
      - name: db
        kind: sql
        data: {validation: data/db_val.jsonl, test: data/db_test.jsonl}
      - name: mine
        kind: my_tasks:MyTask          # module next to the config, class built as MyTask(name=..., **params)
    evaluation:
      backend: hf
      batch_size: auto           # or a number of prompts per forward pass
      max_new_tokens: 512
      sandbox: {timeout_s: 10, memory_mb: 1024}
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from cycleqd.config_files import check_dtype_name, read_mapping
from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import SPLITS, Backend, Task, WeightsBackend
from cycleqd.evaluation.data import load_items
from cycleqd.evaluation.sandbox import Sandbox, SandboxLimits
from cycleqd.plugins import import_object
from cycleqd.validation import validation_lines

#: Bumped when a built-in checker changes how it judges, so that cached results are not reused.
SCORING_VERSION = "1"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class SandboxSpec(BaseModel):
    """Limits and isolation of the sandbox that runs what models wrote (``evaluation.sandbox``).

    Attributes:
        isolation: ``auto`` (use what the machine offers), ``required`` (refuse to run without network,
            file-system and process isolation) or ``off`` (limits only; for debugging).
        timeout_s: Wall-clock seconds per run.
        cpu_s: CPU seconds per process.
        memory_mb: Memory per process (and per sandbox where a memory cgroup can be made).
        max_processes: Processes alive at once.
        max_file_mb: Largest file written.
        disk_mb: Most the sandbox's folder may hold, all files together; a run writing more is killed.
        max_output_kb: Output kept per stream.
        network: Allow network access.
        binds: Extra host folders the programs may read.
    """

    model_config = ConfigDict(extra="forbid")

    isolation: Literal["auto", "required", "off"] = "auto"
    timeout_s: float = Field(10.0, gt=0)
    cpu_s: float = Field(10.0, gt=0)
    memory_mb: int = Field(1024, gt=0)
    max_processes: int = Field(64, gt=0)
    max_file_mb: int = Field(16, gt=0)
    disk_mb: int = Field(64, gt=0)
    max_output_kb: int = Field(1024, gt=0)
    network: bool = False
    binds: list[str] = Field(default_factory=list)

    def limits(self) -> SandboxLimits:
        """The run limits these settings describe."""
        return SandboxLimits(
            wall_s=self.timeout_s,
            cpu_s=self.cpu_s,
            memory_mb=self.memory_mb,
            max_processes=self.max_processes,
            max_file_mb=self.max_file_mb,
            disk_mb=self.disk_mb,
            max_output_kb=self.max_output_kb,
            network=self.network,
        )

    def build(self, *, root: Path | None = None) -> Sandbox:
        """A :class:`Sandbox` with these settings.

        Args:
            root: Folder that relative ``binds`` are resolved against.

        Returns:
            The sandbox.
        """
        binds = [str((root / b).resolve()) if root and not Path(b).is_absolute() else b for b in self.binds]
        return Sandbox(self.limits(), isolation=self.isolation, binds=binds)


class EvaluationSpec(BaseModel):
    """How models are run and scored (``evaluation:``).

    Attributes:
        backend: ``hf`` (Hugging Face transformers), ``weights`` (tasks compute on raw tensors) or
            ``vllm`` (optional extra, CUDA GPU only; weights loaded in place through vLLM's loader).
        batch_size: Prompts per forward pass (hf backend), or ``auto``: each batch sized from the
            model's shape, its longest sequence and the memory available.
        max_new_tokens: Default most tokens generated per answer (tasks may set their own).
        max_length: Longest prompt plus answer in tokens (default: the model's context size).
        dtype: Dtype of the resident model (``auto``: float32 on CPU, the checkpoint's on GPU).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        cache: Reuse results per (model fingerprint, task, split) from the cache file.
        cache_file: SQLite file of cached results (relative to the config's folder).
        chat_template: ``auto`` (use the tokenizer's chat template when it has one), ``on`` (require
            one) or ``off`` (plain prompts).
        workers: Sandboxed checks run in parallel.
        sandbox: Sandbox limits.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["hf", "weights", "vllm"] = "hf"
    batch_size: int | str = "auto"
    max_new_tokens: int = Field(512, gt=0)
    max_length: int | None = Field(None, gt=0)
    dtype: str = "auto"
    device: str = "auto"
    cache: bool = True
    cache_file: str | None = None
    chat_template: Literal["auto", "on", "off"] = "auto"
    workers: int = Field(4, gt=0)
    sandbox: SandboxSpec = Field(default_factory=SandboxSpec)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: object) -> int | str:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value  # type: ignore[return-value]
        raise ValueError(f"must be a number of prompts greater than 0, or auto; got {value!r}")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str | None:
        return check_dtype_name(value)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value


class TaskSpec(BaseModel):
    """One task of the run (an item of ``tasks:``).

    Attributes:
        name: Unique name (letters, digits, ``_ . -``), used in archives and reports.
        kind: A built-in kind (``exact_match``, ``python_code``, ``sql``, ``shell``, ``agent``,
            ``choice``) or ``module:Class`` for a custom :class:`~cycleqd.evaluation.base.Task`.
        data: A JSONL file whose items carry ``split``, or a mapping split → JSONL file. Relative paths
            are resolved against the config's folder. Required for built-in kinds.
        params: Options of the kind (each built-in kind validates its own; for custom tasks they are
            the class's keyword arguments).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    data: str | dict[str, str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"task name {value!r} may hold only letters, digits, '_', '.' and '-'")
        return value

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from cycleqd.evaluation.tasks import TASK_KINDS

        if value not in TASK_KINDS and ":" not in value:
            raise ValueError(
                f"unknown task kind {value!r}; use one of {', '.join(sorted(TASK_KINDS))} or module:Class "
                "for a custom task"
            )
        return value

    @field_validator("data")
    @classmethod
    def _known_splits(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if isinstance(value, dict):
            bad = sorted(set(value) - set(SPLITS))
            if bad:
                raise ValueError(
                    f"data has split(s) {', '.join(bad)}; use validation, test and (optionally) select"
                )
            if not value:
                raise ValueError("data is an empty mapping; give a file per split")
        return value

    @property
    def is_builtin(self) -> bool:
        """Whether the kind is a built-in one."""
        return ":" not in self.kind


def format_validation_error(exc: ValidationError, *, prefix: str = "") -> str:
    """Turn a pydantic error into lines ``field.path: problem``.

    Args:
        exc: The error.
        prefix: Path of the validated object in the config (``evaluation``, ``tasks``).

    Returns:
        One line per problem.
    """
    model = EvaluationSpec if prefix == "evaluation" else TaskSpec
    return "\n".join(validation_lines(exc, model=model, prefix=prefix))


def parse_eval_config(
    config: Mapping[str, Any], *, source: str = "config"
) -> tuple[list[TaskSpec], EvaluationSpec]:
    """Validate the ``tasks`` and ``evaluation`` sections of a parsed config.

    Args:
        config: The whole parsed config (other sections are ignored).
        source: Name of the config for messages.

    Returns:
        The task specs and the evaluation spec.

    Raises:
        ConfigError: Listing every problem with its field path.
    """
    if "tasks" not in config:
        raise ConfigError(f"{source} has no tasks: section; list the tasks to score models on")
    problems = []
    specs: list[TaskSpec] = []
    try:
        specs = TypeAdapter(list[TaskSpec]).validate_python(config["tasks"])
    except ValidationError as exc:
        problems.append(format_validation_error(exc, prefix="tasks"))
    try:
        evaluation = EvaluationSpec.model_validate(config.get("evaluation") or {})
    except ValidationError as exc:
        problems.append(format_validation_error(exc, prefix="evaluation"))
    if problems:
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(problems))
    if not specs:
        raise ConfigError(f"{source}: tasks is empty; list at least one task")
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"{source}: task name(s) {', '.join(dupes)} appear more than once; names must be unique"
        )
    return specs, evaluation


def load_eval_config(path: str | Path) -> tuple[list[TaskSpec], EvaluationSpec, Path]:
    """Read the ``tasks`` and ``evaluation`` sections of a YAML config file.

    Args:
        path: The config file.

    Returns:
        The task specs, the evaluation spec, and the config's folder (for relative paths).

    Raises:
        ConfigError: When the file is missing, is not YAML, or its sections are invalid.
    """
    path = Path(path).expanduser()
    config = read_mapping(path, fields="tasks, evaluation, ...")
    specs, evaluation = parse_eval_config(config, source=str(path))
    return specs, evaluation, path.resolve().parent


def build_tasks(
    specs: Sequence[TaskSpec],
    *,
    root: Path,
    evaluation: EvaluationSpec | None = None,
    sandbox: Sandbox | None = None,
) -> list[Task]:
    """Build the tasks of a config, reading and checking their data.

    Args:
        specs: The task specs.
        root: The config's folder (relative data paths and custom task modules are found there).
        evaluation: Evaluation settings (default max new tokens, sandbox, workers); defaults if ``None``.
        sandbox: The sandbox to use (default: one built from ``evaluation.sandbox``).

    Returns:
        The tasks, in config order.

    Raises:
        ConfigError: For bad params, data or custom task classes.
    """
    from cycleqd.evaluation.tasks import TASK_KINDS, TaskContext

    evaluation = evaluation or EvaluationSpec()
    context = TaskContext(
        sandbox=sandbox or evaluation.sandbox.build(root=root),
        max_new_tokens=evaluation.max_new_tokens,
        workers=evaluation.workers,
    )
    tasks: list[Task] = []
    for spec in specs:
        data = None
        data_digest = ""
        if spec.data is not None:
            data, data_digest = load_items(spec.data, root=root, task=spec.name)
        reserved = sorted({"name", "data", "context"} & set(spec.params))
        if reserved:
            raise ConfigError(
                f"task {spec.name}: params may not set {', '.join(reserved)} (given by the task entry itself)"
            )
        if spec.is_builtin:
            if data is None:
                raise ConfigError(
                    f"task {spec.name}: kind {spec.kind} needs data: a JSONL file or split → file"
                )
            task: Task = TASK_KINDS[spec.kind](name=spec.name, data=data, context=context, **spec.params)
        else:
            task = _build_custom(spec, data, root=root)
        if not task.signature:
            blob = json.dumps(
                {
                    "kind": spec.kind,
                    "params": spec.params,
                    "data": data_digest,
                    "scoring": SCORING_VERSION,
                    "context": context.signature(),
                },
                sort_keys=True,
                default=str,
            )
            task.signature = hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()
        tasks.append(task)
    return tasks


def _build_custom(spec: TaskSpec, data: Mapping[str, Any] | None, *, root: Path) -> Task:
    cls = import_object(spec.kind, search_paths=[root], what=f"task class of task {spec.name}")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(
            f"task {spec.name}: {spec.kind} is not a subclass of cycleqd.evaluation.base.Task; "
            "custom tasks subclass Task and implement evaluate()"
        )
    kwargs: dict[str, Any] = {"name": spec.name, **spec.params}
    params = inspect.signature(cls).parameters
    takes_data = "data" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "data" in params or (takes_data and data is not None):
        kwargs["data"] = data
    elif data is not None:
        raise ConfigError(f"task {spec.name}: {spec.kind} takes no data argument; remove data: or add one")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"task {spec.name}: cannot build {spec.kind} with params {sorted(spec.params)}: {exc}"
        ) from exc


def build_backend(spec: EvaluationSpec, *, model_dir: str | Path | None) -> Backend:
    """Build the backend that holds the models (one resident model for ``hf``).

    Args:
        spec: Evaluation settings.
        model_dir: The base model folder (config and tokenizer); the ``hf`` backend builds its resident
            model from it. Unused by ``weights``.

    Returns:
        The backend.

    Raises:
        ConfigError: For an unavailable backend or an unusable model folder.
    """
    if spec.backend == "weights":
        return WeightsBackend()
    if spec.backend == "vllm":
        from cycleqd.evaluation.backends.vllm import VLLMBackend

        if model_dir is None:
            raise ConfigError("the vllm backend needs a model folder (config.json and tokenizer)")
        return VLLMBackend(
            model_dir, dtype=spec.dtype, chat_template=spec.chat_template, max_length=spec.max_length
        )
    if model_dir is None:
        raise ConfigError("the hf backend needs a model folder (config.json and tokenizer)")
    from cycleqd.evaluation.backends.hf import HFBackend

    return HFBackend(
        model_dir,
        dtype=spec.dtype,
        device=spec.device,
        batch_size=None if spec.batch_size == "auto" else spec.batch_size,
        chat_template=spec.chat_template,
        max_length=spec.max_length,
    )


def check_compatible(tasks: Sequence[Task], backend: Backend | str) -> None:
    """Refuse text tasks on a backend that cannot generate.

    Args:
        tasks: The tasks.
        backend: The backend, or its name as ``evaluation.backend`` gives it (to check before any
            model is read).

    Raises:
        ConfigError: Naming the tasks that need a language-model backend.
    """
    if backend == "weights" or isinstance(backend, WeightsBackend):
        text = [t.name for t in tasks if t.needs_text]
        if text:
            raise ConfigError(
                f"task(s) {', '.join(text)} need a language-model backend, but evaluation.backend is "
                "weights; use backend: hf, or tasks with needs_text = False"
            )
