"""What every config file of the project shares: reading it, reporting its problems, dtype names, models.

The run config (``cycleqd run``), the merge config (``cycleqd merge``) and the evaluation config
(``cycleqd eval``) read their YAML with :func:`read_mapping`, report pydantic errors with
:func:`invalid_message` (one ``field.path: problem`` line each, from :mod:`cycleqd.validation`),
check dtype names with :func:`check_dtype_name` and find models with :func:`locate_model`, so the
three accept and refuse alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cycleqd.errors import ConfigError
from cycleqd.validation import validation_lines
from cycleqd.weights.dtypes import parse_dtype
from cycleqd.weights.source import HUB_PREFIX


def read_mapping(path: str | Path, *, what: str = "config file", fields: str = "") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping.

    Args:
        path: The file.
        what: What it is, for the message about a missing file (``merge config``).
        fields: Examples of its top-level fields, for the message about a file that is no mapping.

    Returns:
        The parsed mapping.

    Raises:
        ConfigError: When the file is missing, is not YAML, or holds no mapping.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of fields" + (f" ({fields})" if fields else ""))
    return raw


def invalid_message(
    exc: ValidationError, *, source: str, model: type[BaseModel] | None = None, what: str = "config"
) -> str:
    """The problems of a config, one line per field, under a line naming the file.

    Args:
        exc: The pydantic error.
        source: The config file (or another name for it), for the message.
        model: The validated model (unknown fields are then listed with the valid ones).
        what: What the file is (``config``, ``merge config``).

    Returns:
        A readable multi-line message.
    """
    lines = validation_lines(exc, model=model)
    head = f"{source} is not a valid {what} ({len(lines)} problem(s)):"
    return "\n".join([head, *(f"  {ln}" for ln in lines)])


def check_dtype_name(value: str | None) -> str | None:
    """The one rule for dtype names in configs (for pydantic validators).

    Args:
        value: ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``, ``auto``, or ``None``.

    Returns:
        The name, lower-cased.

    Raises:
        ValueError: For a name :func:`~cycleqd.weights.dtypes.parse_dtype` does not know.
    """
    if value is None:
        return None
    try:
        parse_dtype(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value.lower()


def locate_model(value: str, *, root: Path, where: str, search_cwd: bool = False) -> str:
    """Where a config's model lives: a hub id kept as it is, or an absolute path.

    Hub ids are written ``hf:org/name``. Anything else is a path: relative ones are read against the
    config's folder (``search_cwd`` first tries the working directory, as mergekit does, and then a
    missing bare ``org/name`` is taken for a hub id, as mergekit files write them).

    Args:
        value: The config's value.
        root: The config file's folder.
        where: The field, for messages (``models.base``).
        search_cwd: mergekit's rules (the merge config's).

    Returns:
        The hub id or the absolute path (which need not exist unless ``search_cwd``: a run checks its
        models before loading them, naming every missing one).

    Raises:
        ConfigError: With ``search_cwd``, when the path does not exist (a LoRA reference is named as
            such).
    """
    if value.startswith(HUB_PREFIX):
        return value
    p = Path(value).expanduser()
    if not search_cwd:
        return str(p if p.is_absolute() else (root / p).resolve())
    for candidate in (p, root / p) if not p.is_absolute() else (p,):
        if candidate.exists():
            return str(candidate.resolve())
    if "+" in value:
        raise ConfigError(
            f"{where}: {value} does not exist; LoRA references (model+lora) are not supported, merge the "
            "adapter into the model first"
        )
    if value.count("/") == 1 and not value.startswith((".", "/", "~")):
        return HUB_PREFIX + value
    raise ConfigError(f"{where}: model path {value} does not exist (looked in {Path.cwd()} and {root})")
