"""Folders for the ``shell`` and ``agent`` (shell) kinds.

They are prepared from an item's files, then snapshotted and compared after commands ran in them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field, field_validator

#: Most entries a snapshot lists (a command that makes more files is judged on the first ones).
MAX_ENTRIES = 10000


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


def snapshot(folder: Path, *, max_entries: int = MAX_ENTRIES) -> dict[str, str]:
    """Describe a folder tree without following symlinks.

    Args:
        folder: The folder.
        max_entries: Most entries listed.

    Returns:
        Relative path → ``dir``, ``file:<hash of content>``, ``link:<target>`` or ``other``.
    """
    out: dict[str, str] = {}
    stack = [folder]
    while stack and len(out) < max_entries:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = os.path.relpath(entry.path, folder)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
                stack.append(Path(entry.path))
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(entry.path)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = "file:" + _hash_file(entry.path)
            else:
                out[rel] = "other"
            if len(out) >= max_entries:
                break
    return out


def _hash_file(path: str) -> str:
    h = hashlib.blake2b(digest_size=12)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return "unreadable"
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
