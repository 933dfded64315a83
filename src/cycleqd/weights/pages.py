"""Releasing the pages of memory-mapped weight files that a process has read.

safetensors maps whole files, and tensors read from them may share the mapping's memory: every page a
streamed pass touches then stays resident in the process (and counts in its peak memory) until the
file is closed, so streaming three models would look as large as all three. ``madvise(MADV_DONTNEED)``
on a private file mapping drops the process's pages while the file stays in the operating system's
page cache (a re-read is served from memory). It is applied only to ranges that ``/proc/self/maps``
shows as private mappings of a file, never to anonymous memory, where it would discard data.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

_MADV_DONTNEED = 4


class MappedPages:
    """Drops this process's pages behind tensors that are views of memory-mapped files.

    Linux only; elsewhere calls do nothing.
    """

    def __init__(self) -> None:
        self._libc: Any = None
        self._ranges: list[tuple[int, int]] = []
        self._page = 4096
        if sys.platform.startswith("linux"):
            try:
                self._libc = ctypes.CDLL(None, use_errno=True)
                self._libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                self._page = os.sysconf("SC_PAGE_SIZE")
            except (OSError, AttributeError, ValueError):
                self._libc = None

    def __call__(self, tensors: Sequence[torch.Tensor]) -> None:
        """Release the file-backed pages under these tensors (others are left alone).

        Args:
            tensors: Tensors that will not be read again by this process.
        """
        if self._libc is None:
            return
        seen = set()
        for t in tensors:
            storage = t.untyped_storage()
            if storage.device.type != "cpu" or storage.resizable():
                continue  # allocated by torch, not mapped from a file
            start = storage.data_ptr()
            end = start + storage.nbytes()
            if start in seen or not self._file_mapped(start, end):
                continue
            seen.add(start)
            lo = -(-start // self._page) * self._page  # whole pages inside the tensor only
            hi = end // self._page * self._page
            if hi > lo and self._libc.madvise(lo, hi - lo, _MADV_DONTNEED) != 0:
                self._libc = None  # unsupported here: stop trying
                return

    def refresh(self) -> None:
        """Forget the file mappings seen so far; the next call reads ``/proc/self/maps`` again.

        Call it when mappings may have been closed since (a new build, a new merge): an address range
        that held a file can later hold anonymous memory, which must never be released.
        """
        self._ranges = []

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def _file_mapped(self, start: int, end: int) -> bool:
        for refresh in (False, True):
            if refresh:
                self._ranges = private_file_mappings()
            if any(a <= start and end <= b for a, b in self._ranges):
                return True
        return False


def private_file_mappings() -> list[tuple[int, int]]:
    """Address ranges privately mapped from regular files, read from /proc/self/maps.

    Adjacent mappings are joined: one file may span several.
    """
    ranges: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                # address perms offset dev inode path: private ("p") mappings of a real file only
                if (
                    len(parts) == 6
                    and parts[1].endswith("p")
                    and parts[4] != "0"
                    and parts[5].startswith("/")
                ):
                    a, b = (int(x, 16) for x in parts[0].split("-"))
                    if ranges and ranges[-1][1] == a:
                        ranges[-1] = (ranges[-1][0], b)
                    else:
                        ranges.append((a, b))
    except OSError:
        return []
    return ranges
