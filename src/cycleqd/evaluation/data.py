"""Task data: items in JSONL files, one JSON object per line, grouped by split.

Two layouts: one file whose items each carry ``"split": "validation"``, ``"select"`` or ``"test"``, or
one file per split (a mapping split → file in the config; a ``split`` field there, if present, must
agree). The ``select`` split is optional: it chooses a run's recommended model among its candidates. Every
item has an ``id`` (string or integer) that is unique within its split; it is how saved predictions
find their item.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import SPLIT_NAMES, SPLITS

#: Items by split, each a JSON object with a string ``id``.
ItemsBySplit = dict[str, list[dict[str, Any]]]


def resolve_path(path: str | Path, *, root: Path) -> Path:
    """Resolve a path from a config against the config's folder (``~`` expanded).

    Args:
        path: The path as written.
        root: The config's folder.

    Returns:
        The absolute path.
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def read_jsonl(path: Path, *, task: str) -> list[tuple[int, dict[str, Any]]]:
    """Read the JSON objects of a JSONL file (blank lines skipped).

    Args:
        path: The file.
        task: Task name, for messages.

    Returns:
        Pairs of (line number, object).

    Raises:
        ConfigError: When the file is missing, holds no items, or a line is not a JSON object.
    """
    if not path.is_file():
        raise ConfigError(f"task {task}: data file {path} does not exist; fix the path under tasks[].data")
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"task {task}: {path} line {lineno} is not valid JSON ({exc.msg}); each line must hold "
                    "one JSON object"
                ) from None
            if not isinstance(obj, dict):
                raise ConfigError(
                    f"task {task}: {path} line {lineno} holds a {type(obj).__name__}, not an object"
                )
            out.append((lineno, obj))
    if not out:
        raise ConfigError(
            f"task {task}: data file {path} holds no items; write one JSON object per line (or remove "
            "the task)"
        )
    return out


def load_items(data: str | Mapping[str, str], *, root: Path, task: str) -> tuple[ItemsBySplit, str]:
    """Load a task's items and a digest of the files' contents.

    Args:
        data: One JSONL path (items carry ``split``) or a mapping split → JSONL path.
        root: Folder that relative paths are resolved against (the config's folder).
        task: Task name, for messages.

    Returns:
        Items by split (both splits present, maybe empty), and a hex digest of the data.

    Raises:
        ConfigError: For missing files, bad JSON, missing or duplicate ids and unknown splits.
    """
    items: ItemsBySplit = {s: [] for s in SPLITS}
    digest = hashlib.blake2b(digest_size=16)
    files = {None: data} if isinstance(data, str) else dict(data)
    for fixed_split, rel in files.items():
        path = resolve_path(rel, root=root)
        for lineno, obj in read_jsonl(path, task=task):
            where = f"task {task}: {path} line {lineno}"
            split = obj.get("split", fixed_split)
            if split is None:
                raise ConfigError(
                    f'{where} has no split; add "split": "validation", "select" or "test" to each item, '
                    "or give data as a mapping {validation: FILE, test: FILE}"
                )
            if split not in SPLITS:
                raise ConfigError(f"{where} has split {split!r}; use {SPLIT_NAMES}")
            if fixed_split is not None and split != fixed_split:
                raise ConfigError(f"{where} says split {split!r} but the file is given for {fixed_split!r}")
            if "id" not in obj:
                raise ConfigError(f'{where} has no "id"; give every item an id unique within its split')
            raw_id = obj["id"]
            if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
                raise ConfigError(f"{where} has id {raw_id!r}; ids must be strings or integers")
            obj = {**obj, "id": str(raw_id), "split": split}
            items[split].append(obj)
        digest.update(str(fixed_split).encode())
        digest.update(path.read_bytes())
    for split, lst in items.items():
        seen: set[str] = set()
        for obj in lst:
            if obj["id"] in seen:
                raise ConfigError(
                    f"task {task}: id {obj['id']!r} appears twice in split {split}; ids must be unique"
                )
            seen.add(obj["id"])
    return items, digest.hexdigest()
