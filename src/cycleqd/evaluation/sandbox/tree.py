"""Folder trees a program leaves: their snapshots, their size against a disk quota, and their removal.

The ``shell`` kind compares the folder a command leaves with the expected one. A command checked on its
own is snapshotted by the evaluating process after its sandbox ended; a command checked in a batch is
snapshotted inside the batch's sandbox before the next one runs (see
:mod:`~cycleqd.evaluation.sandbox.supervisor`). Both use this module, so the two snapshots agree. It
uses the standard library only and must stay importable without the package (the sandbox launcher
loads it by path).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from typing import Any

#: Most entries a snapshot lists (a command that makes more files is judged on the first ones).
MAX_ENTRIES = 10000


def snapshot(folder: str | os.PathLike[str], *, max_entries: int = MAX_ENTRIES) -> dict[str, str]:
    """Describe a folder tree without following symlinks.

    Args:
        folder: The folder.
        max_entries: Most entries listed.

    Returns:
        Relative path → ``dir``, ``file:<hash of content>``, ``link:<target>`` or ``other``.
    """
    root = os.fspath(folder)
    out: dict[str, str] = {}
    stack = [root]
    while stack and len(out) < max_entries:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = os.path.relpath(entry.path, root)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
                stack.append(entry.path)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(entry.path)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = "file:" + hash_file(entry.path)
            else:
                out[rel] = "other"
            if len(out) >= max_entries:
                break
    return out


def hash_file(path: str) -> str:
    """A short hash of a regular file's content (``unreadable`` when it cannot be opened).

    Args:
        path: The file (a symlink is not followed).

    Returns:
        24 hex digits, or ``unreadable``.
    """
    h = hashlib.blake2b(digest_size=12)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return "unreadable"
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete a folder tree (or a file or link) that a sandboxed program may have locked itself.

    Folders the program made unreadable or unwritable (it owns them, or we are root) are opened up
    and the step retried once; a folder that could not be opened or listed is removed whole. A path
    that does not exist is fine.

    Args:
        path: The folder, file or link.
    """

    def retry(func: Callable[..., Any], p: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            if func in (os.open, os.scandir, os.listdir):
                shutil.rmtree(p)
            else:
                func(p)

    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=retry)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


#: Seconds between two measurements of a running program's folder against its disk quota.
QUOTA_CHECK_S = 0.1

#: What each entry (file, folder, link) counts towards a disk quota beyond its blocks, so that many
#: empty files cannot fill a file system's inodes for free.
ENTRY_BYTES = 1024


def usage(folder: str | os.PathLike[str], *, stop_above: int | None = None) -> int:
    """Bytes a folder tree takes on disk, as a disk quota counts them.

    Every entry counts its allocated blocks (``st_blocks``, so a sparse file counts what it really
    holds) plus :data:`ENTRY_BYTES`; symlinks are not followed. Folders that cannot be listed count
    as entries only.

    Args:
        folder: The tree's root.
        stop_above: Stop walking as soon as the total exceeds this (the answer is then only known
            to be above it), which bounds the walk of a tree made to be slow to walk.

    Returns:
        The total in bytes.
    """
    total = 0
    stack = [os.fspath(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512 + ENTRY_BYTES
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    if stop_above is not None and total > stop_above:
                        return total
        except OSError:
            continue
    return total


class DiskQuota:
    """A running program's folder measured against a quota, at most every :data:`QUOTA_CHECK_S`.

    Both the evaluating process (single runs) and the batch supervisor (each program of a batch) watch
    their programs with it.

    Args:
        folder: The folder whose tree counts.
        limit: Bytes it may hold (:func:`usage`).
        start: ``time.monotonic()`` when the program started (the first measurement is due then).
    """

    def __init__(self, folder: str | os.PathLike[str], limit: int, *, start: float) -> None:
        self.folder = folder
        self.limit = limit
        self.next_check = start

    def exceeded(self) -> bool:
        """Whether the folder holds more than the limit now."""
        return usage(self.folder, stop_above=self.limit) > self.limit

    def due_and_exceeded(self, now: float) -> bool:
        """Measure when a measurement is due (then schedule the next one); whether it was over."""
        if now < self.next_check:
            return False
        self.next_check = now + QUOTA_CHECK_S
        return self.exceeded()
