"""Folders for the ``shell`` and ``agent`` (shell) kinds.

They are prepared from an item's files, then snapshotted and compared after commands ran in them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import PurePosixPath

from pydantic import BaseModel, Field, field_validator

# The snapshot lives with the sandbox: a batch of commands is snapshotted inside its sandbox.
from cycleqd.evaluation.sandbox.tree import MAX_ENTRIES, snapshot

__all__ = [
    "MAX_ENTRIES",
    "FilesFields",
    "file_list",
    "normalize_output",
    "snapshot",
    "tree_difference",
    "tree_from_files",
]


class FilesFields(BaseModel):
    """Item field ``files``: relative path → text content of the folder the command starts in."""

    files: dict[str, str] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _relative(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            p = PurePosixPath(name)
            if p.is_absolute() or ".." in p.parts or not p.parts:
                raise ValueError(f"file name {name!r} must be a relative path without '..'")
        return value


def tree_from_files(files: Mapping[str, str]) -> dict[str, str]:
    """The snapshot a folder holding exactly ``files`` would have (for ``expected_tree``)."""
    out: dict[str, str] = {}
    for name, content in files.items():
        parts = PurePosixPath(name).parts
        for i in range(1, len(parts)):
            out[os.path.join(*parts[:i])] = "dir"
        h = hashlib.blake2b(content.encode(), digest_size=12).hexdigest()
        out[os.path.join(*parts)] = "file:" + h
    return out


def tree_difference(got: Mapping[str, str], expected: Mapping[str, str]) -> str | None:
    """Why two snapshots differ (``None`` when equal)."""
    if dict(got) == dict(expected):
        return None
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    parts = []
    for label, names in (("missing", missing), ("unexpected", extra), ("changed", changed)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{label}: {shown}")
    return "folder differs: " + "; ".join(parts)


def normalize_output(text: str) -> str:
    """Output as compared: trailing blanks of each line and trailing empty lines removed."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def file_list(files: Mapping[str, str]) -> str:
    """The files of an item, for prompts."""
    return ", ".join(sorted(files)) if files else "(empty folder)"
