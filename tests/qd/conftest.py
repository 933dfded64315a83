"""Fixtures for the qd layer: three tasks, 4 bins per task over [0, 1], and archives of task ``a``."""

from __future__ import annotations

import pytest

from cycleqd.qd import Archive, ArchiveSet, BinSpec

TASKS = ("a", "b", "c")
BINS = 4


def grid_scores(i: int, j: int, quality: float) -> dict[str, float]:
    """Scores that put a model in cell (i, j) of the archive of task ``a`` (bin centres)."""
    return {"a": quality, "b": (i + 0.5) / BINS, "c": (j + 0.5) / BINS}


@pytest.fixture
def cell_scores():
    """The helper :func:`grid_scores`, for tests that place models by cell."""
    return grid_scores


@pytest.fixture
def specs() -> dict[str, BinSpec]:
    return {t: BinSpec(task=t, low=0.0, high=1.0, bins=BINS) for t in TASKS}


@pytest.fixture
def empty_archive(specs) -> Archive:
    return Archive(task="a", tasks=TASKS, bin_specs=specs)


@pytest.fixture
def one_elite_archive(empty_archive) -> Archive:
    empty_archive.add("m0", grid_scores(1, 2, 0.5))
    return empty_archive


@pytest.fixture
def full_archive(empty_archive) -> Archive:
    # Quality 0.01 × (4i + j): every cell filled, qualities 0.00 .. 0.15.
    for i in range(BINS):
        for j in range(BINS):
            empty_archive.add(f"m{i}{j}", grid_scores(i, j, 0.01 * (BINS * i + j)))
    return empty_archive


@pytest.fixture
def archive_set(specs) -> ArchiveSet:
    return ArchiveSet(tasks=TASKS, bin_specs=specs)
