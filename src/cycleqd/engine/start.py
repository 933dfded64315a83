"""The start of a run: the experts in the archives, then the seed merges beside them.

The base and the experts are checked and scored on validation, the bins are set by the paper's rule
(or the config's ranges), every archive receives the experts, and the configured seeds follow: the
merges of ``init.merges`` in config order, then the learned merge of ``init.distill``. Each seed is
scored like a child and kept in the run folder only while an archive holds it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from cycleqd.atomic import atomic_write_text
from cycleqd.config import DistillConfig, RunConfig
from cycleqd.engine.children import scores_by_task
from cycleqd.engine.distill import DistillError, distill_obstacle, distilled_merge
from cycleqd.engine.expert_signal import NoSignalError, check_signal
from cycleqd.engine.finalise import Scorer
from cycleqd.engine.model_registry import (
    BASE_ID,
    ModelKind,
    ModelRecord,
    ModelRegistry,
    ModelStatus,
    expert_id,
    seed_id,
)
from cycleqd.engine.paths import RunPaths
from cycleqd.engine.reporting import Reporter
from cycleqd.engine.run_folder import remove_path
from cycleqd.errors import ConfigError
from cycleqd.evaluation.backends.batching import available_memory
from cycleqd.evaluation.backends.hf import resolve_device
from cycleqd.evaluation.base import Task
from cycleqd.evaluation.evaluator import Evaluator
from cycleqd.operators.merge import merge_models
from cycleqd.qd import ArchiveSet, DegenerateRangeWarning, make_bin_specs
from cycleqd.seeding import derive_seed
from cycleqd.weights import ModelSource, fingerprint_tensors, save_model, validate_models
from cycleqd.weights.dtypes import parse_dtype


def distill_refusal(cfg: RunConfig, tasks: Sequence[Task], base: ModelSource) -> str | None:
    """Refuse an ``init.distill`` that cannot run (before any work), or say why an optional one is off.

    Args:
        cfg: The run config.
        tasks: The run's tasks.
        base: The base model.

    Returns:
        Why an optional learned merge will be skipped, or ``None`` (it runs, or none is asked for).

    Raises:
        ConfigError: When a learned merge that is not optional cannot run, with the fixes.
    """
    spec = cfg.init.distill
    if spec is None:
        return None
    reason = distill_obstacle(
        tasks,
        backend_kind=cfg.evaluation.backend,
        base=base,
        experts=len(cfg.task_names),
        available=available_memory(resolve_device(cfg.evaluation.device)),
    )
    if reason is not None and not spec.optional:
        raise ConfigError(
            f"init.distill cannot run: {reason}; or set init.distill.optional: true to skip it "
            "(the offplane preset does), or init: {distill: null}"
        )
    return reason


class StartedArchives(NamedTuple):
    """What :meth:`RunStart.archives` made.

    Attributes:
        archives: The archives, holding the experts and the seeds they kept.
        registry: Every model scored so far.
        fingerprints: The fingerprint of the base and of each expert, by model id.
    """

    archives: ArchiveSet
    registry: ModelRegistry
    fingerprints: dict[str, str]


@dataclass
class RunStart:
    """Fills the archives of a new run.

    Attributes:
        cfg: The run's config.
        paths: Its folder.
        base: The base model.
        experts: Each task's expert.
        evaluator: The driver's evaluator (the learned merge uses its tasks and backend).
        score: Scores a model on one split.
        reporter: Progress sink.
        distill_skipped: Why the optional learned merge is skipped (``None``: it runs).
    """

    cfg: RunConfig
    paths: RunPaths
    base: ModelSource
    experts: Mapping[str, ModelSource]
    evaluator: Evaluator
    score: Scorer
    reporter: Reporter
    distill_skipped: str | None = None

    def archives(self) -> StartedArchives:
        """Check the models, score the base and experts, make the archives and offer the seeds.

        Returns:
            The archives, the registry and the fingerprints of the base and experts.

        Raises:
            NoSignalError: When every expert scores 0 on every task and ``stop_without_signal`` is on.
        """
        cfg, base, experts = self.cfg, self.base, self.experts
        self.reporter.log(f"checking the base and {len(experts)} experts")
        scans = validate_models(base, list(experts.values()), check_finite=cfg.models.check_finite)
        registry = ModelRegistry()
        registry.add(
            ModelRecord(
                id=BASE_ID,
                kind=ModelKind.BASE,
                status=ModelStatus.REFERENCE,
                path=str(base.path),
                fingerprint=scans[BASE_ID].fingerprint,
            )
        )
        self.reporter.phase("evaluating base and experts", total=len(experts) + 1)
        base_scores = self.score(base, scans[BASE_ID].fingerprint, "validation")
        registry[BASE_ID].scores["validation"] = base_scores
        self.reporter.advance()
        expert_scores: dict[str, dict[str, float]] = {}
        expert_results = {}
        for task, src in experts.items():
            fp = scans[src.name].fingerprint
            expert_results[task] = self.evaluator.evaluate(src, fingerprint=fp, split="validation")
            expert_scores[task] = scores_by_task(expert_results[task], cfg.task_names)
            registry.add(
                ModelRecord(
                    id=src.name,
                    kind=ModelKind.EXPERT,
                    status=ModelStatus.ELITE,
                    path=str(src.path),
                    fingerprint=fp,
                    active_task=task,
                    scores={"validation": expert_scores[task]},
                )
            )
            self.reporter.advance()
        try:  # all zero: stop with a diagnosis instead of evolving noise
            check_signal(expert_results)
        except NoSignalError:
            if cfg.stop_without_signal:
                raise
            self.reporter.log(
                "warning: every expert scores 0 on every task; stop_without_signal is off, so the run "
                "goes on without signal"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DegenerateRangeWarning)
            specs = make_bin_specs(
                cfg.task_names,
                bins=cfg.archive.bins,
                ranges=cfg.archive.ranges,
                expert_scores=expert_scores,
                low_factor=cfg.archive.low_factor,
                high_factor=cfg.archive.high_factor,
            )
        for w in caught:
            self.reporter.log(f"warning: {w.message}")
        archives = ArchiveSet(tasks=cfg.task_names, bin_specs=specs)
        for task in cfg.task_names:
            archives.add(expert_id(task), expert_scores[task])
        for rec in registry.of_kind(ModelKind.EXPERT):
            if archives.refcount(rec.id) == 0:
                rec.status = ModelStatus.RELEASED
        self._seed_merges(archives, registry, experts)
        return StartedArchives(archives, registry, {k: v.fingerprint for k, v in scans.items()})

    def _seed_merges(
        self, archives: ArchiveSet, registry: ModelRegistry, experts: Mapping[str, ModelSource]
    ) -> None:
        """Score the configured merges of the experts and offer them to the archives, in config order.

        The merges of ``init.merges`` come first, then the learned merge of ``init.distill``. Each is
        saved in the run folder like a child and kept only while an archive holds it.
        """
        merges, distill = self.cfg.init.merges, self.cfg.init.distill
        if not merges and distill is None:
            return
        # No checkpoint yet: whatever an interrupted start left in models/ belongs to no run.
        remove_path(self.paths.models)
        self.reporter.phase("scoring the seed merges", total=len(merges))
        for index, spec in enumerate(merges):
            weights = dict(
                merge_models(
                    self.base,
                    [experts[t] for t in self.cfg.task_names],
                    method=spec.method,
                    parameters=spec.params,
                    seed=derive_seed(self.cfg.seed, "seed-merge", index),
                    out_dtype=parse_dtype(self.cfg.models.dtype),
                )
            )
            self._offer_seed(
                archives,
                registry,
                seed_id(index),
                weights,
                {"method": spec.method, "params": dict(spec.params)},
            )
            self.reporter.advance()
        if distill is not None:
            self._distill_seed(archives, registry, experts, distill, index=len(merges))

    def _distill_seed(
        self,
        archives: ArchiveSet,
        registry: ModelRegistry,
        experts: Mapping[str, ModelSource],
        spec: DistillConfig,
        *,
        index: int,
    ) -> None:
        """Learn the merge of ``init.distill`` and offer it; an optional one that cannot be made is noted.

        Either way ``distill.json`` says what happened: the fit's record, or why it was skipped.
        """
        if self.distill_skipped is None:
            self.reporter.log("init.distill: each expert answers its task's validation prompts")
            try:
                weights, record = distilled_merge(
                    self.base,
                    [experts[t] for t in self.cfg.task_names],
                    tasks=[self.evaluator.tasks[t] for t in self.cfg.task_names],
                    backend=self.evaluator.backend,
                    spec=spec,
                    seed=derive_seed(self.cfg.seed, "distill"),
                    device=resolve_device(self.cfg.evaluation.device),
                    progress=self._distill_progress(spec.steps),
                )
            except (DistillError, torch.OutOfMemoryError) as exc:
                if not spec.optional:
                    raise
                self.distill_skipped = str(exc) or type(exc).__name__
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            else:
                atomic_write_text(self.paths.distill, json.dumps(record, indent=1) + "\n")
                dtype = parse_dtype(self.cfg.models.dtype)  # None: each tensor keeps the base's dtype
                weights = {
                    n: t.to(dtype or self.base.dtype(n)) if t.is_floating_point() else t
                    for n, t in weights.items()
                }
                crossover = {"method": "distill", "params": spec.model_dump()}
                self._offer_seed(archives, registry, seed_id(index), weights, crossover)
                return
        self.reporter.log(f"init.distill skipped (optional): {self.distill_skipped}")
        record = {"settings": spec.model_dump(), "skipped": self.distill_skipped}
        atomic_write_text(self.paths.distill, json.dumps(record, indent=1) + "\n")

    def _distill_progress(self, steps: int) -> Any:
        """The fit's progress callback: a phase that starts with the first step."""

        def advance(step: int, loss: float) -> None:
            if step == 1:
                self.reporter.phase("learning the distilled merge", total=steps, done=0)
            self.reporter.advance({"loss": round(loss, 4)})

        return advance

    def _offer_seed(
        self,
        archives: ArchiveSet,
        registry: ModelRegistry,
        model_id: str,
        weights: Mapping[str, torch.Tensor],
        crossover: dict[str, Any],
    ) -> None:
        """Score a seed merge on validation, offer it to the archives, save it while one holds it."""
        fingerprint = fingerprint_tensors(weights)
        scores = self.score(weights, fingerprint, "validation")
        record = ModelRecord(
            id=model_id,
            kind=ModelKind.SEED,
            status=ModelStatus.REJECTED,
            fingerprint=fingerprint,
            parents=[expert_id(t) for t in self.cfg.task_names],
            crossover=crossover,
            scores={"validation": scores},
        )
        added = archives.add(model_id, scores)
        for released in added.released:
            registry[released].status = ModelStatus.RELEASED
            if registry[released].kind.stored_in_run:
                registry[released].path = None
                remove_path(self.paths.model_dir(released))
        if archives.refcount(model_id) > 0:
            record.status = ModelStatus.ELITE
            dtype = parse_dtype(self.cfg.models.dtype)
            save_model(weights, self.paths.model_dir(model_id), template=self.base, dtype=dtype)
            record.path = str(self.paths.model_dir(model_id).relative_to(self.paths.root))
        registry.add(record)
