"""The session folder of a sandbox: safe file names, files written into it, its throwaway uid."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from cycleqd.evaluation.sandbox.cgroup import kill_until_gone
from cycleqd.evaluation.sandbox.warden import uid_pids

#: The throwaway uids a session run as root draws from.
_UID_RANGE = (1_800_000_000, 1_900_000_000)


def _safe_relpath(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or not p.parts or any(part in ("..", "") for part in p.parts) or name.endswith("/"):
        raise ValueError(
            f"file name {name!r} must be a relative path inside the working folder, without '..'"
        )
    return p


def write_files(folder: Path, files: Mapping[str, str | bytes]) -> None:
    """Create files (and their folders) under ``folder``.

    Args:
        folder: Destination folder.
        files: Relative path → text (UTF-8) or bytes.

    Raises:
        ValueError: For an absolute path or one that leaves the folder.
    """
    for name, content in files.items():
        rel = _safe_relpath(name)
        path = folder.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else bytes(content)
        path.write_bytes(data)


def _chown_tree(folder: Path, uid: int, gid: int) -> None:
    os.chown(folder, uid, gid)
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process running as ``uid`` (a throwaway uid owned by one sandbox only)."""
    kill_until_gone(lambda: uid_pids(uid), timeout=0.5)
