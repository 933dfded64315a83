"""Operator objects built from a run config (shared by the driver and Ray workers)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cycleqd.config import RunConfig
from cycleqd.engine.jobs import ChildBuilder, ParentCache
from cycleqd.operators import (
    ExpertSVDCache,
    GaussianMutation,
    Mutation,
    NoMutation,
    SVDExpertMutation,
    SVDSelfMutation,
)
from cycleqd.operators.crossover import MergeCrossover
from cycleqd.weights import ModelSource
from cycleqd.weights.dtypes import parse_dtype

BASE_ID = "base"


def expert_id(task: str) -> str:
    """Model id of a task's expert."""
    return f"expert-{task}"


def svd_caches(
    cfg: RunConfig, *, fingerprints: Mapping[str, str], svd_root: str | Path
) -> dict[str, ExpertSVDCache]:
    """The expert SVD cache of each task (folders keyed by expert and base fingerprints and rank).

    Args:
        cfg: The run config.
        fingerprints: Fingerprint of the base and of each expert, by model id.
        svd_root: Folder holding the caches.

    Returns:
        Task name → cache (possibly not built yet).
    """
    rank = cfg.mutation.rank
    return {
        task: ExpertSVDCache(
            ExpertSVDCache.folder_for(
                svd_root,
                expert_fingerprint=fingerprints[expert_id(task)],
                base_fingerprint=fingerprints[BASE_ID],
                rank=rank,
            ),
            rank=rank,
        )
        for task in cfg.task_names
    }


def build_mutation(
    cfg: RunConfig, *, fingerprints: Mapping[str, str], svd_root: str | Path | None
) -> Mutation:
    """The mutation a config asks for.

    Args:
        cfg: The run config.
        fingerprints: Fingerprints of the base and experts (``svd-expert`` only).
        svd_root: Folder of the expert SVD caches (``svd-expert`` only); they must be built.

    Returns:
        The mutation.
    """
    m = cfg.mutation
    if m.kind == "svd-expert":
        assert svd_root is not None
        return SVDExpertMutation(
            caches=svd_caches(cfg, fingerprints=fingerprints, svd_root=svd_root), rho=m.rho
        )
    if m.kind == "svd-self":
        return SVDSelfMutation(
            low=m.low, high=m.high, randomized_above=m.randomized_above, rank=m.randomized_rank
        )
    if m.kind == "gaussian":
        return GaussianMutation(sigma=m.sigma)
    return NoMutation()


def build_child_builder(
    cfg: RunConfig, base: ModelSource, *, fingerprints: Mapping[str, str], svd_root: str | Path | None
) -> ChildBuilder:
    """The builder of children for a run's settings (the driver's and every Ray worker's).

    Args:
        cfg: The run config.
        base: The base model.
        fingerprints: Fingerprints of the base and experts (``svd-expert`` caches).
        svd_root: Folder of the expert SVD caches.

    Returns:
        The builder.
    """
    return ChildBuilder(
        base=base,
        mutation=build_mutation(cfg, fingerprints=fingerprints, svd_root=svd_root),
        crossover_mean=cfg.crossover.mean,
        crossover_std=cfg.crossover.std,
        per_layer=cfg.crossover.per_layer,
        layer_std=cfg.crossover.layer_std,
        scale_std=cfg.crossover.scale_std,
        merge=MergeCrossover(method=cfg.crossover.method, params=dict(cfg.crossover.params)),
        skip_patterns=tuple(cfg.mutation.skip),
        dtype=parse_dtype(cfg.models.dtype),
        parents=ParentCache(size=cfg.runner.parent_cache),
    )
