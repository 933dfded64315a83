"""Releasing the pages of memory-mapped files: only file mappings, never anonymous memory."""

from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path

import pytest
import torch

from cycleqd.weights.pages import MappedPages, private_file_mappings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise release is Linux only")

PAGE = mmap.PAGESIZE
N_PAGES = 4


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _tensor_at(address: int) -> torch.Tensor:
    """A float32 tensor over N_PAGES pages at ``address`` (not owned by torch: not resizable)."""
    buf = (ctypes.c_char * (N_PAGES * PAGE)).from_address(address)
    return torch.frombuffer(buf, dtype=torch.float32)


def _map(libc: ctypes.CDLL, *, fd: int = -1, at: int | None = None) -> int:
    flags = (
        mmap.MAP_PRIVATE | (mmap.MAP_ANONYMOUS if fd < 0 else 0) | (0x10 if at is not None else 0)
    )  # MAP_FIXED
    address = libc.mmap(at, N_PAGES * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    return address


def test_pages_of_a_file_are_dropped_and_anonymous_memory_is_never_touched(tmp_path: Path) -> None:
    libc = _libc()
    path = tmp_path / "weights.bin"
    path.write_bytes(torch.arange(N_PAGES * PAGE // 4, dtype=torch.float32).numpy().tobytes())
    release = MappedPages()
    with path.open("rb") as fh:
        address = _map(libc, fd=fh.fileno())
    try:
        mapped = _tensor_at(address)
        mapped.fill_(-1.0)  # private copy-on-write pages: the file keeps its bytes
        assert any(a <= address < b for a, b in private_file_mappings())
        release([mapped])
        # The process's private pages are gone: reading the mapping shows the file again.
        assert torch.equal(mapped, torch.arange(N_PAGES * PAGE // 4, dtype=torch.float32))

        # The file is unmapped and anonymous memory takes its addresses: a released range seen
        # before must not be trusted, or madvise would discard the new data.
        libc.munmap(address, N_PAGES * PAGE)
        assert _map(libc, at=address) == address
        anonymous = _tensor_at(address)
        anonymous.fill_(7.0)
        release.refresh()
        release([anonymous])
        assert torch.equal(anonymous, torch.full_like(anonymous, 7.0))
    finally:
        libc.munmap(address, N_PAGES * PAGE)


def test_tensors_allocated_by_torch_are_left_alone() -> None:
    t = torch.full((N_PAGES * PAGE // 4,), 3.0)
    MappedPages()([t])
    assert torch.equal(t, torch.full_like(t, 3.0))
