"""Assembling what builds and evaluates children, from plain data: the driver's and every Ray worker's.

:class:`WorkerSpec` is all a process needs (the resolved config as a dict, the fingerprints that locate
the expert SVD caches, the cache folders); :func:`assemble` turns it into a child builder and an
evaluator. The engine's local runner and each Ray worker go through the same two functions
(:func:`build_child_builder`, :func:`build_evaluator`), so they build the same children and evaluate
them with the same options, result cache included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.config import RunConfig
from cycleqd.engine.children import ChildBuilder, ParentCache
from cycleqd.engine.model_registry import BASE_ID, expert_id
from cycleqd.evaluation.base import Task
from cycleqd.evaluation.cache import ResultCache
from cycleqd.evaluation.evaluator import Evaluator
from cycleqd.evaluation.spec import build_backend, build_tasks
from cycleqd.operators import ExpertSVDCache, Mutation, MutationContext
from cycleqd.operators import build_mutation as mutation_of_kind
from cycleqd.operators.crossover import MergeCrossover
from cycleqd.weights import ModelSource, open_model
from cycleqd.weights.dtypes import parse_dtype


@dataclass(frozen=True)
class WorkerSpec:
    """What a process needs to build its own child builder and evaluator (plain data).

    Attributes:
        config: The run config as a dict (``RunConfig.model_dump``), paths already absolute.
        svd_fingerprints: Fingerprints of the base and experts (to find the expert SVD caches).
        svd_root: Folder of the expert SVD caches.
        cache_file: The evaluation result cache (SQLite, shared by processes); ``None``: none.
    """

    config: dict[str, Any]
    svd_fingerprints: Mapping[str, str] = field(default_factory=dict)
    svd_root: str | None = None
    cache_file: str | None = None


@dataclass
class Assembly:
    """A process's means to make children (see :func:`assemble`).

    Attributes:
        config: The run config.
        builder: Builds children.
        evaluator: Evaluates them.
    """

    config: RunConfig
    builder: ChildBuilder
    evaluator: Evaluator


def assemble(spec: WorkerSpec) -> Assembly:
    """Build a process's child builder and evaluator from its spec.

    Args:
        spec: The spec.

    Returns:
        The assembly (its evaluator's backend holds a resident model).
    """
    cfg = RunConfig.model_validate(spec.config)
    base = open_model(cfg.models.base, name=BASE_ID)
    builder = build_child_builder(cfg, base, fingerprints=spec.svd_fingerprints, svd_root=spec.svd_root)
    evaluator = build_evaluator(cfg, model_dir=base.path, cache_file=spec.cache_file)
    return Assembly(config=cfg, builder=builder, evaluator=evaluator)


def build_evaluator(
    cfg: RunConfig,
    *,
    model_dir: str | Path,
    cache_file: str | Path | None,
    tasks: Sequence[Task] | None = None,
) -> Evaluator:
    """The evaluator of a run's tasks with its configured backend.

    Args:
        cfg: The run config.
        model_dir: The base model's folder (the backend's resident model is built from it).
        cache_file: The result cache, or ``None``; it is used only when ``evaluation.cache`` is on.
        tasks: The tasks, when the caller has built them already (else built from the config).

    Returns:
        The evaluator.
    """
    if tasks is None:
        tasks = build_tasks(cfg.tasks, root=Path(cfg.root or "."), evaluation=cfg.evaluation)
    backend = build_backend(cfg.evaluation, model_dir=model_dir)
    cache = ResultCache(cache_file) if cfg.evaluation.cache and cache_file is not None else None
    return Evaluator(list(tasks), backend, cache=cache)


def svd_caches(
    cfg: RunConfig, *, fingerprints: Mapping[str, str], svd_root: str | Path, rank: int | None
) -> dict[str, ExpertSVDCache]:
    """The expert SVD cache of each task (folders keyed by expert and base fingerprints and rank).

    Args:
        cfg: The run config.
        fingerprints: Fingerprint of the base and of each expert, by model id.
        svd_root: Folder holding the caches.
        rank: Truncation rank (``None`` keeps every singular value).

    Returns:
        Task name → cache (possibly not built yet).
    """
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
    """The mutation a config asks for, built by its registry entry.

    Args:
        cfg: The run config.
        fingerprints: Fingerprints of the base and experts (for mutations that read expert SVDs).
        svd_root: Folder of the expert SVD caches (likewise); ``None`` where none may be read.

    Returns:
        The mutation (its :meth:`~cycleqd.operators.Mutation.expert_svds` name the caches it reads,
        which may not be built yet).
    """

    def caches(rank: int | None) -> dict[str, ExpertSVDCache]:
        if svd_root is None:
            raise ValueError(f"mutation {cfg.mutation.kind} reads expert SVDs but no cache folder was given")
        return svd_caches(cfg, fingerprints=fingerprints, svd_root=svd_root, rank=rank)

    m = cfg.mutation
    return mutation_of_kind(m.kind, m.settings.model_dump(), context=MutationContext(expert_svds=caches))


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
