"""The CycleQD loop: initialise the archives with the experts, make one child per generation, aggregate.

The driver alone owns the archives and the registry. Jobs are drawn in generation order and their
outcomes are incorporated in generation order, whatever order they finish in. With ``W`` job slots
(1 for the local runner, the number of workers for Ray), the parents of generation ``g`` are drawn
from the archives as they stand after generation ``g − W`` was incorporated; the jobs drawn but not yet
incorporated are part of the checkpoint. A run is therefore a deterministic function of its config
and ``W``, and a run stopped at any moment and resumed ends exactly as one never stopped.

Write order of a generation (each write atomic): the accepted child's weights, its metrics line, the
checkpoint, then deletion of the weights no archive refers to any more. On resume, metrics lines past
the checkpoint and model folders it does not refer to are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cycleqd.atomic import atomic_write_text
from cycleqd.config import DistillConfig, RunConfig, check_model_paths, dump_config, load_config
from cycleqd.engine.aggregate import aggregate_tensors, softmax_weights
from cycleqd.engine.assembly import WorkerSpec, build_child_builder, build_evaluator, build_mutation
from cycleqd.engine.children import ChildBuilder, Job, JobOutcome, scores_by_task
from cycleqd.engine.choice import Candidate, choose, mean_score, top_by_validation
from cycleqd.engine.distill import DistillError, distill_obstacle, distilled_merge
from cycleqd.engine.expert_signal import NoSignalError, check_signal
from cycleqd.engine.model_registry import (
    AGGREGATE_ID,
    BASE_ID,
    ModelKind,
    ModelRecord,
    ModelRegistry,
    ModelStatus,
    child_id,
    expert_id,
    seed_id,
)
from cycleqd.engine.paths import RunPaths
from cycleqd.engine.runners.base import Runner
from cycleqd.engine.soup import SOUP_KINDS, greedy_ingredients, soup_id
from cycleqd.engine.state import RunState
from cycleqd.errors import ConfigError, CycleQDError
from cycleqd.evaluation.backends.batching import available_memory
from cycleqd.evaluation.backends.hf import resolve_device
from cycleqd.evaluation.base import SPLITS
from cycleqd.evaluation.evaluator import Evaluator
from cycleqd.evaluation.spec import build_tasks, check_compatible
from cycleqd.operators import is_mutable
from cycleqd.operators.merge import merge_models
from cycleqd.qd import ArchiveSet, DegenerateRangeWarning, archive_metrics, make_bin_specs, select_parents
from cycleqd.seeding import derive_seed
from cycleqd.weights import ModelSource, fingerprint_tensors, open_model, save_model, validate_models
from cycleqd.weights.dtypes import parse_dtype
from cycleqd.weights.save import copy_model


class Reporter(Protocol):
    """Receives progress from the engine (the command line shows it with rich)."""

    def phase(self, name: str, *, total: int | None = None, done: int = 0) -> None:
        """A new phase of work starts."""

    def advance(self, info: Mapping[str, Any] | None = None) -> None:
        """One unit of the current phase is done."""

    def log(self, message: str) -> None:
        """A line for the user."""


class NullReporter:
    """Reports nothing."""

    def phase(self, name: str, *, total: int | None = None, done: int = 0) -> None:  # noqa: D102
        pass

    def advance(self, info: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        pass

    def log(self, message: str) -> None:  # noqa: D102
        pass


def _refuse_taken(paths: RunPaths, out: str | Path) -> None:
    """Refuse a run folder that is a file, holds a run or holds anything but a lock file.

    Raises:
        CycleQDError: Naming the folder and what to do instead.
    """
    if paths.root.exists() and not paths.root.is_dir():
        raise CycleQDError(f"{paths.root} is a file, not a folder; give a new folder as --out")
    if paths.checkpoint.exists() or paths.config.exists():
        raise CycleQDError(
            f"{paths.root} already holds a run; continue it with `cycleqd resume {out}` or give another --out"
        )
    if paths.root.exists() and any(p.name != ".lock" for p in paths.root.iterdir()):
        raise CycleQDError(f"{paths.root} is not empty; give a new or empty folder as --out")


@contextlib.contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """Hold an exclusive lock on the run folder (released by the OS if the process dies).

    Raises:
        CycleQDError: If another process is working on the run.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    fh = open(paths.lock, "w")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CycleQDError(
                f"another process is working on {paths.root}; wait for it to finish or stop it"
            ) from None
        yield
    finally:
        fh.close()


@dataclass
class Engine:
    """Runs (or resumes) one CycleQD run in a run folder.

    Build it with :meth:`create` for a new run or :meth:`open` for an existing one.

    Attributes:
        cfg: The run's config.
        paths: Its folder.
        reporter: Progress sink.
    """

    cfg: RunConfig
    paths: RunPaths
    reporter: Reporter = field(default_factory=NullReporter)
    _evaluator: Evaluator | None = field(default=None, init=False, repr=False)
    _tasks: list[Any] = field(default_factory=list, init=False, repr=False)
    _distill_skipped: str | None = field(default=None, init=False, repr=False)  # why init.distill is not run
    _base: ModelSource | None = field(default=None, init=False, repr=False)
    # "new": create() made it (config.yaml written once the run holds the lock and its checks
    # pass); "changed": open() changed the config (rewritten at the same point); None: as on disk.
    _pending_config: str | None = field(default=None, init=False, repr=False)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig, out: str | Path, *, reporter: Reporter | None = None) -> Engine:
        """Prepare a new run in ``out`` (which must not hold anything yet).

        Args:
            cfg: A validated config.
            out: The run folder.
            reporter: Progress sink.

        Returns:
            The engine; call :meth:`run`.

        Nothing is written here: :meth:`run` writes ``config.yaml`` once it holds the run's lock and
        the tasks' data and the base model have passed their checks, so a run refused up front leaves
        the folder as it was and a corrected command can use it.

        Raises:
            CycleQDError: If ``out`` is a file, already holds a run or other files, or a model path is
                missing.
        """
        paths = RunPaths(Path(out).resolve())
        _refuse_taken(paths, out)
        check_model_paths(cfg)
        engine = cls(cfg=cfg, paths=paths, reporter=reporter or NullReporter())
        engine._pending_config = "new"
        return engine

    @classmethod
    def open(
        cls, run_dir: str | Path, *, generations: int | None = None, reporter: Reporter | None = None
    ) -> Engine:
        """Open an existing run folder to resume it.

        Args:
            run_dir: The run folder.
            generations: A new total number of generations (a finished run is extended, evolving
                from where it stopped and aggregating again); recorded in the run's config. With one
                job in flight the extended run equals a run asked for the new total from the start;
                with N in flight (Ray runner) the first N new generations draw their parents from the
                final archives, not from the archives N generations back as that run would have.
            reporter: Progress sink.

        Returns:
            The engine; call :meth:`run`.

        Raises:
            CycleQDError: If the folder holds no run.
        """
        paths = RunPaths(Path(run_dir).resolve())
        if not paths.root.exists():
            raise CycleQDError(
                f"{paths.root} does not exist; give the folder of a run (`cycleqd run CONFIG --out FOLDER` "
                "makes one, `cycleqd status FOLDER` shows it)"
            )
        if not paths.config.is_file():
            raise CycleQDError(f"{paths.root} holds no run (no config.yaml); start one with `cycleqd run`")
        engine = cls(cfg=load_config(paths.config), paths=paths, reporter=reporter or NullReporter())
        if generations is not None and generations != engine.cfg.generations:
            if paths.checkpoint.exists():
                done = RunState.load(paths.checkpoint).generation
                if generations < done:
                    raise CycleQDError(
                        f"{paths.root} has already made {done} generations; "
                        "--generations must be at least that"
                    )
            engine.cfg.generations = generations
            engine._pending_config = "changed"  # recorded by run(), once the lock is held
        return engine

    # -- public ----------------------------------------------------------------------------------
    def run(self, *, runner: Runner | None = None) -> RunState:
        """Run to the end: initialise (or restore), evolve, aggregate and evaluate on the test split.

        Args:
            runner: Executes jobs; the local runner by default.

        Returns:
            The final state.
        """
        with run_lock(self.paths):
            # Build tasks first: bad task data is reported before any model is loaded.
            self._tasks = build_tasks(
                self.cfg.tasks, root=Path(self.cfg.root or "."), evaluation=self.cfg.evaluation
            )
            self._choice_split()  # a select split on some tasks only is refused before any work
            check_compatible(self._tasks, self.cfg.evaluation.backend)
            for task in self._tasks:  # reference answers and data checks, before any long work
                for split in SPLITS:
                    task.prepare(split)
            self._base = open_model(self.cfg.models.base, name=BASE_ID)
            if not self.paths.checkpoint.exists():
                self._check_distill()
            self._write_pending_config()
            if self.paths.checkpoint.exists():
                state = RunState.load(self.paths.checkpoint)
                self._recover(state)
                self.reporter.log(f"resuming {self.paths.root} at generation {state.generation}")
            else:
                state = self._initialise()
            self._set_generations(state, self.cfg.generations)
            if state.generation < state.generations:
                runner = runner or self._runner(state)
                if runner.slots != self._slots():
                    raise ValueError(
                        f"the runner has {runner.slots} slots but the config asks for {self._slots()}; "
                        "jobs in flight are part of the run's definition"
                    )
                try:
                    self._evolve(state, runner)
                finally:
                    runner.close()
            if not state.finished:
                self._finalise(state)
            return state

    def _write_pending_config(self) -> None:
        """Write ``config.yaml`` for a new run or a changed one (the lock is held, checks passed).

        Raises:
            CycleQDError: When a new run's folder got a run meanwhile (made by another process).
        """
        if self._pending_config is None:
            return
        if self._pending_config == "new" and (self.paths.config.exists() or self.paths.checkpoint.exists()):
            raise CycleQDError(
                f"{self.paths.root} already holds a run (made after this one was prepared); continue it "
                f"with `cycleqd resume {self.paths.root}` or give another --out"
            )
        atomic_write_text(self.paths.config, dump_config(self.cfg))
        self._pending_config = None

    def _choice_split(self) -> str:
        """``select`` when every task has a select split, ``validation`` when none has.

        Raises:
            CycleQDError: When only some tasks have one (the choice would compare unlike averages).
        """
        having = [t.name for t in self._tasks if t.has_split("select")]
        if not having:
            return "validation"
        if len(having) < len(self._tasks):
            lacking = [t.name for t in self._tasks if t.name not in having]
            raise CycleQDError(
                f"task(s) {', '.join(having)} have a select split but {', '.join(lacking)} not; give every "
                "task select items (the recommended model is chosen on them) or none"
            )
        return "select"

    def _set_generations(self, state: RunState, total: int) -> None:
        """Apply the configured number of generations, extending a finished run if it grew."""
        if total < state.generation:
            raise CycleQDError(
                f"the run has already made {state.generation} generations; generations ({total}) "
                "cannot be lower"
            )
        if total > state.generation and state.finished:
            self.reporter.log(f"extending the finished run from {state.generation} to {total} generations")
            state.finished = False
            state.final = {}
            state.registry.remove(AGGREGATE_ID)
            # Test scores belong to the end of a run: the final evaluation makes them again (from the
            # cache), so the registry is the one a run asked for this many generations would have
            # (with one job in flight; see `open` for N).
            for rec in state.registry:
                rec.scores.pop("test", None)
                rec.scores.pop("select", None)
        state.in_flight = [j for j in state.in_flight if j.generation < total]
        state.generations = total

    # -- pieces ----------------------------------------------------------------------------------
    def _experts(self) -> dict[str, ModelSource]:
        return {t: open_model(p, name=expert_id(t)) for t, p in self.cfg.models.experts.items()}

    def _initialise(self) -> RunState:
        cfg, base = self.cfg, self._base
        assert base is not None
        experts = self._experts()
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
        base_scores = self._scores(base, scans[BASE_ID].fingerprint, "validation")
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
        self._prepare_mutation_cache({k: v.fingerprint for k, v in scans.items()})
        state = RunState(
            seed=cfg.seed,
            tasks=cfg.task_names,
            generation=0,
            generations=cfg.generations,
            archives=archives,
            registry=registry,
            initial_metrics=self._archive_metrics(archives),
        )
        self._fill_in_flight(state, slots=self._slots())
        state.save(self.paths.checkpoint)
        return state

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
        assert self._base is not None
        # No checkpoint yet: whatever an interrupted start left in models/ belongs to no run.
        _remove(self.paths.models)
        self.reporter.phase("scoring the seed merges", total=len(merges))
        for index, spec in enumerate(merges):
            weights = dict(
                merge_models(
                    self._base,
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
        assert self._base is not None
        if self._distill_skipped is None:
            self.reporter.log("init.distill: each expert answers its task's validation prompts")
            try:
                weights, record = distilled_merge(
                    self._base,
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
                self._distill_skipped = str(exc) or type(exc).__name__
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            else:
                atomic_write_text(self.paths.distill, json.dumps(record, indent=1) + "\n")
                dtype = parse_dtype(self.cfg.models.dtype)  # None: each tensor keeps the base's dtype
                weights = {
                    n: t.to(dtype or self._base.dtype(n)) if t.is_floating_point() else t
                    for n, t in weights.items()
                }
                crossover = {"method": "distill", "params": spec.model_dump()}
                self._offer_seed(archives, registry, seed_id(index), weights, crossover)
                return
        self.reporter.log(f"init.distill skipped (optional): {self._distill_skipped}")
        record = {"settings": spec.model_dump(), "skipped": self._distill_skipped}
        atomic_write_text(self.paths.distill, json.dumps(record, indent=1) + "\n")

    def _distill_progress(self, steps: int) -> Any:
        """The fit's progress callback: a phase that starts with the first step."""

        def advance(step: int, loss: float) -> None:
            if step == 1:
                self.reporter.phase("learning the distilled merge", total=steps, done=0)
            self.reporter.advance({"loss": round(loss, 4)})

        return advance

    def _check_distill(self) -> None:
        """Refuse an ``init.distill`` that cannot run (before any work); note why an optional one is off."""
        self._distill_skipped = None
        spec = self.cfg.init.distill
        if spec is None:
            return
        assert self._base is not None
        reason = distill_obstacle(
            self._tasks,
            backend_kind=self.cfg.evaluation.backend,
            base=self._base,
            experts=len(self.cfg.task_names),
            available=available_memory(resolve_device(self.cfg.evaluation.device)),
        )
        if reason is not None and not spec.optional:
            raise ConfigError(
                f"init.distill cannot run: {reason}; or set init.distill.optional: true to skip it "
                "(the offplane preset does), or init: {distill: null}"
            )
        self._distill_skipped = reason

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
        scores = self._scores(weights, fingerprint, "validation")
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
                _remove(self.paths.model_dir(released))
        if archives.refcount(model_id) > 0:
            record.status = ModelStatus.ELITE
            dtype = parse_dtype(self.cfg.models.dtype)
            save_model(weights, self.paths.model_dir(model_id), template=self._base, dtype=dtype)
            record.path = str(self.paths.model_dir(model_id).relative_to(self.paths.root))
        registry.add(record)

    def _slots(self) -> int:
        return self.cfg.runner.workers if self.cfg.runner.kind == "ray" else 1

    @property
    def evaluator(self) -> Evaluator:
        """The driver's evaluator, built on first use (its backend holds a resident model)."""
        if self._evaluator is None:
            assert self._base is not None, "call run()"
            self._evaluator = build_evaluator(
                self.cfg, model_dir=self._base.path, cache_file=self.paths.eval_cache, tasks=self._tasks
            )
        return self._evaluator

    def _release_evaluator(self) -> None:
        if self._evaluator is None:
            return
        evaluator, self._evaluator = self._evaluator, None
        evaluator.close()  # frees the backend's model (a vLLM engine keeps its memory until shut down)

    def _scores(self, weights: Mapping[str, torch.Tensor], fingerprint: str, split: str) -> dict[str, float]:
        results = self.evaluator.evaluate(weights, fingerprint=fingerprint, split=split)
        return scores_by_task(results, self.cfg.task_names)

    def svd_root(self) -> Path:
        """Folder of the expert SVD caches (``mutation.svd_cache`` or ``svd`` in the run folder)."""
        return Path(self.cfg.mutation.svd_cache) if self.cfg.mutation.svd_cache else self.paths.svd

    def worker_spec(self, state: RunState) -> WorkerSpec:
        """What a process needs to build this run's children and evaluate them as the driver does."""
        return WorkerSpec(
            config=self.cfg.model_dump(mode="json"),
            svd_fingerprints=state.registry.reference_fingerprints(),
            svd_root=str(self.svd_root()),
            cache_file=str(self.paths.eval_cache),
        )

    def _prepare_mutation_cache(self, fingerprints: Mapping[str, str]) -> None:
        """Compute once the expert SVDs the mutation reads (if any); complete caches are kept."""
        caches = build_mutation(self.cfg, fingerprints=fingerprints, svd_root=self.svd_root()).expert_svds()
        if not caches:
            return
        base = self._base
        assert base is not None
        names = [n for n in base if is_mutable(n, len(base.shape(n)), self.cfg.mutation.skip)]
        todo = {t: c for t, c in caches.items() if c.missing(names) or not c.complete}
        if not todo:
            return
        experts = self._experts()
        self.reporter.phase("expert SVDs", total=sum(len(c.missing(names)) for c in todo.values()))
        for task, cache in todo.items():
            cache.build(experts[task], base, names, progress=lambda _n: self.reporter.advance())

    def child_builder(self, state: RunState) -> ChildBuilder:
        """The builder of children for this run's settings.

        Args:
            state: The run state (for the experts' fingerprints).

        Returns:
            A :class:`~cycleqd.engine.children.ChildBuilder`.
        """
        assert self._base is not None
        fingerprints = state.registry.reference_fingerprints()
        return build_child_builder(self.cfg, self._base, fingerprints=fingerprints, svd_root=self.svd_root())

    def _runner(self, state: RunState) -> Runner:
        from cycleqd.engine.runners.local import LocalRunner

        self._prepare_mutation_cache(state.registry.reference_fingerprints())  # if deleted, or interrupted
        if self.cfg.runner.kind == "ray":
            from cycleqd.engine.runners.ray import RayRunner

            # The workers hold the models: free the driver's (a GPU it holds is a worker's less).
            self._release_evaluator()
            return RayRunner.from_config(self.worker_spec(state), self.cfg.runner)
        return LocalRunner(self.child_builder(state), self.evaluator, durable=self.cfg.models.durable_writes)

    def active_task(self, generation: int) -> str:
        """The task whose archive supplies the parents of a generation.

        Args:
            generation: g.

        Returns:
            tasks[g mod K], or the first task when cycling is off (ablation).
        """
        tasks = self.cfg.task_names
        return tasks[generation % len(tasks)] if self.cfg.cycle else tasks[0]

    def _model_path(self, state: RunState, model_id: str) -> str:
        rec = state.registry[model_id]
        assert rec.path is not None, f"model {model_id} has no weights"
        p = Path(rec.path)
        return str(p if p.is_absolute() else self.paths.root / p)

    def draw_job(self, state: RunState, generation: int) -> Job:
        """Draw generation ``g``'s job from the archives as they stand now.

        Args:
            state: The run state.
            generation: g.

        Returns:
            The job (parents chosen with the run's selection rule, seeded by (seed, g)).
        """
        task = self.active_task(generation)
        archive = state.archives[task]
        rng = np.random.default_rng(derive_seed(state.seed, generation, "selection"))
        s = self.cfg.selection
        if len(archive) >= 2:
            parents = select_parents(archive, rng=rng, method=s.method, n=2, **s.settings.model_dump())
        else:  # a lone elite is crossed with itself; the mutation still varies it
            parents = [archive.elites()[0].model_id] * 2
        return Job(
            generation=generation,
            child_id=child_id(generation),
            active_task=task,
            parents=tuple(parents),
            parent_paths=tuple(self._model_path(state, p) for p in parents),
            seed=derive_seed(state.seed, generation),
            parent_fingerprints=tuple(state.registry[p].fingerprint or "" for p in parents),
        )

    def _fill_in_flight(self, state: RunState, *, slots: int) -> list[Job]:
        new = []
        nxt = state.generation + len(state.in_flight)
        while len(state.in_flight) < slots and nxt < state.generations:
            job = self.draw_job(state, nxt)
            state.in_flight.append(job)
            new.append(job)
            nxt += 1
        return new

    def _archive_metrics(self, archives: ArchiveSet) -> dict[str, Any]:
        return {t: archive_metrics(archives[t]) for t in self.cfg.task_names}

    def _evolve(self, state: RunState, runner: Runner) -> None:
        slots = self._slots()
        # Jobs restored from the checkpoint run again first, exactly as drawn.
        for job in state.in_flight:
            runner.submit(job)
        for job in self._fill_in_flight(state, slots=slots):
            runner.submit(job)
        waiting: dict[int, JobOutcome] = {}
        self.reporter.phase("evolving", total=state.generations, done=state.generation)
        while state.generation < state.generations:
            while state.generation not in waiting:
                outcome = runner.next_outcome()
                waiting[outcome.job.generation] = outcome
            outcome = waiting.pop(state.generation)
            line = self._incorporate(state, outcome, runner)
            for job in self._fill_in_flight(state, slots=slots):
                runner.submit(job)
            state.save(self.paths.checkpoint)
            crash_point("after-checkpoint", state.generation - 1)
            self._collect_garbage(state)
            self.reporter.advance(line)
            self._check_failures(state)

    def _check_failures(self, state: RunState) -> None:
        n = self.cfg.stop_after_failures
        children = [r for r in state.registry if r.kind is ModelKind.CHILD][-n:]
        if len(children) == n and all(r.status is ModelStatus.FAILED for r in children):
            first, last = children[0].generation, children[-1].generation
            raise CycleQDError(
                f"the last {n} children all failed (generations {first}-{last}); "
                f"the last error: {children[-1].error}\nfix the cause, then continue with "
                f"`cycleqd resume {self.paths.root}` (raise stop_after_failures to tolerate more)"
            )

    def _incorporate(self, state: RunState, outcome: JobOutcome, runner: Runner) -> dict[str, Any]:
        job = outcome.job
        assert state.in_flight
        assert state.in_flight[0].generation == job.generation
        record = ModelRecord(
            id=job.child_id,
            kind=ModelKind.CHILD,
            status=ModelStatus.FAILED,
            fingerprint=outcome.fingerprint,
            generation=job.generation,
            active_task=job.active_task,
            parents=list(job.parents),
            seed=job.seed,
            crossover=outcome.crossover,
            mutation=outcome.mutation,
            error=outcome.error,
        )
        decisions: dict[str, Any] = {}
        released: list[str] = []
        if outcome.scores is not None:
            record.scores["validation"] = outcome.scores
            added = state.archives.add(job.child_id, outcome.scores)
            decisions = {
                t: {"status": r.status.value, "cell": list(r.cell), "displaced": r.displaced}
                for t, r in added.results.items()
            }
            if state.archives.refcount(job.child_id) > 0:
                record.status = ModelStatus.ELITE
                record.path = str(self.paths.model_dir(job.child_id).relative_to(self.paths.root))
                runner.persist(outcome, self.paths.model_dir(job.child_id))
                crash_point("after-persist", job.generation)
            else:
                record.status = ModelStatus.REJECTED
                runner.discard(outcome)
            for model_id in added.released:
                rec = state.registry[model_id]
                rec.status = ModelStatus.RELEASED
                if rec.kind.stored_in_run:
                    rec.path = None
                    released.append(model_id)
        else:
            runner.discard(outcome)
        state.registry.add(record)
        state.in_flight.pop(0)
        state.generation += 1
        line = {
            "generation": job.generation,
            "active_task": job.active_task,
            "parents": list(job.parents),
            "child": job.child_id,
            "status": record.status.value,
            "scores": outcome.scores,
            "error": outcome.error,
            "archives": decisions,
            "released": released,
            "metrics": self._archive_metrics(state.archives),
            "crossover": outcome.crossover,
            "mutation": outcome.mutation,
            "seconds": outcome.seconds,
            "worker": outcome.worker,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _append_line(self.paths.metrics, line)
        crash_point("after-metrics", job.generation)
        return line

    def _parent_path(self, state: RunState, model_id: str) -> str:
        rec = state.registry[model_id]
        if rec.path is None:  # a released parent still needed by a job in flight: kept on disk
            return str(self.paths.model_dir(model_id))
        return self._model_path(state, model_id)

    def _recover(self, state: RunState) -> None:
        """Bring the folder back in line with the checkpoint after a stop at any moment."""
        # Jobs in flight name their parents by absolute path: the folder may have moved since.
        state.in_flight = [
            dataclasses.replace(j, parent_paths=tuple(self._parent_path(state, p) for p in j.parents))
            for j in state.in_flight
        ]
        # Metrics lines written after the last checkpoint are dropped (those generations rerun).
        if self.paths.metrics.exists():
            kept = [
                ln
                for ln in self.paths.metrics.read_text().splitlines()
                if ln.strip() and _line_generation(ln) is not None and _line_generation(ln) < state.generation
            ]
            atomic_write_text(self.paths.metrics, "".join(k + "\n" for k in kept))
        self._collect_garbage(state)
        for entry in self.paths.root.glob(".*.tmp-*"):
            _remove(entry)
        damaged = []
        for rec in state.registry:
            if rec.kind.stored_in_run and rec.status is ModelStatus.ELITE:
                try:
                    src = open_model(self._model_path(state, rec.id), name=rec.id)
                    src.shape(next(iter(src)))
                except Exception as exc:
                    damaged.append(f"{rec.id} ({type(exc).__name__}: {exc})")
        if damaged:
            raise CycleQDError(
                f"the weights of {len(damaged)} elite(s) in {self.paths.models} are missing or damaged "
                f"(a power loss without models.durable_writes?): {'; '.join(damaged[:5])}; "
                "the run cannot resume exactly; start it again"
            )

    def _collect_garbage(self, state: RunState) -> None:
        """Delete the weights of children that no archive holds and no job in flight needs.

        Also removes folders written before a checkpoint that never came and temporary folders of
        interrupted writes. A released parent of a job still in flight (Ray runner) is kept until
        that job has been incorporated.
        """
        keep = {r.id for r in state.registry if r.kind.stored_in_run and r.status is ModelStatus.ELITE}
        keep.update(p for job in state.in_flight for p in job.parents)
        if self.paths.models.exists():
            for entry in self.paths.models.iterdir():
                if entry.name not in keep:
                    _remove(entry)

    def _save_soup(self, state: RunState, members: Sequence[str], path: Path) -> tuple[ModelSource, str]:
        """Save θ0 + (1/n) Σ τ of ``members`` to ``path``; return it opened and its fingerprint."""
        assert self._base is not None
        sources = [open_model(self._model_path(state, m), name=m) for m in members]
        save_model(
            aggregate_tensors(self._base, sources, [1.0 / len(members)] * len(members)),
            path,
            template=self._base,
            dtype=parse_dtype(self.cfg.models.dtype),
        )
        soup = open_model(path, name=path.name)
        return soup, fingerprint_tensors(soup)

    def _make_soups(self, state: RunState, top: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
        """Make and register the configured soups of ``top`` (best first), scored on validation.

        A soup of one model, or with the same members as one made before it, is not offered.

        Returns:
            The soups' model ids, and for ``choice.json`` each configured soup's members, the id it is
            offered as (``None`` when not offered) and, for the greedy soup, each addition tried with
            its validation average.
        """
        for kind in SOUP_KINDS:  # a finalisation that was interrupted is redone
            state.registry.remove(soup_id(kind))
        _remove(self.paths.soups)
        kinds = self.cfg.final.soups
        if len(top) < 2 or not kinds:
            return [], {}
        members: dict[str, list[str]] = {}
        searched: dict[str, dict[str, Any]] = {}
        if "uniform" in kinds:
            members["uniform"] = list(top)
        if "greedy" in kinds:
            self.reporter.phase("greedy soup on validation", total=len(top) - 1)
            trial = self.paths.soups / ".trial"
            trials: list[dict[str, Any]] = []

            def soup_score(ids: list[str]) -> float:
                soup, fingerprint = self._save_soup(state, ids, trial)
                self.reporter.advance()
                score = mean_score(self._scores(soup, fingerprint, "validation"))
                trials.append({"added": ids[-1], "validation": score})
                return score

            first = mean_score(state.registry[top[0]].scores["validation"])
            members["greedy"] = greedy_ingredients(top, first_score=first, score=soup_score)
            _remove(trial)
            for t in trials:
                t["kept"] = t["added"] in members["greedy"]
            searched["greedy"] = {"first": top[0], "validation": first, "trials": trials}
        made: list[str] = []
        seen: list[set[str]] = []
        trace: dict[str, dict[str, Any]] = {}
        for kind in SOUP_KINDS:
            ids = members.get(kind)
            if ids is None:
                continue
            offered = len(ids) > 1 and set(ids) not in seen
            trace[kind] = {
                "members": ids,
                "offered_as": soup_id(kind) if offered else None,
                **searched.get(kind, {}),
            }
            if not offered:
                continue
            seen.append(set(ids))
            path = self.paths.soups / kind
            soup, fingerprint = self._save_soup(state, ids, path)
            record = ModelRecord(
                id=soup_id(kind),
                kind=ModelKind.SOUP,
                status=ModelStatus.REFERENCE,
                path=str(path.relative_to(self.paths.root)),
                fingerprint=fingerprint,
                parents=list(ids),
            )
            record.scores["validation"] = self._scores(soup, fingerprint, "validation")  # cached for greedy
            state.registry.add(record)
            made.append(record.id)
        crash_point("after-soups", state.generation)
        return made, trace

    def _finalise(self, state: RunState) -> None:
        assert self._base is not None
        cfg = self.cfg
        bests = {t: state.archives[t].best() for t in cfg.task_names}
        best_ids = [bests[t].model_id for t in cfg.task_names]
        best_scores = [bests[t].scores[t] for t in cfg.task_names]
        weights = softmax_weights(best_scores, temperature=cfg.aggregation.temperature)
        self.reporter.log("aggregating the best elite of each archive")
        sources = [open_model(self._model_path(state, m), name=m) for m in best_ids]
        save_model(
            aggregate_tensors(self._base, sources, weights),
            self.paths.aggregate,
            template=self._base,
            dtype=parse_dtype(cfg.models.dtype),
        )
        crash_point("after-aggregate", state.generation)
        agg = open_model(self.paths.aggregate, name=AGGREGATE_ID)
        state.registry.remove(AGGREGATE_ID)  # a finalisation that was interrupted is redone
        agg_record = ModelRecord(
            id=AGGREGATE_ID,
            kind=ModelKind.AGGREGATE,
            status=ModelStatus.REFERENCE,
            path=self.paths.aggregate.name,
            fingerprint=fingerprint_tensors(agg),
            parents=best_ids,
        )
        state.registry.add(agg_record)
        elites = {e.model_id: e for t in cfg.task_names for e in state.archives[t].elites()}
        by_id = {m: elites[m].scores for m in sorted(elites)}  # ties go to the smaller id
        best_average = top_by_validation(by_id, 1)[0]
        top = top_by_validation(by_id, cfg.final.top_k)
        soups, soup_trace = self._make_soups(state, top)
        candidates = [*top, *soups, AGGREGATE_ID]
        split = self._choice_split()
        opened: dict[str, ModelSource] = {AGGREGATE_ID: agg}

        def source(model_id: str) -> ModelSource:
            if model_id not in opened:
                opened[model_id] = open_model(self._model_path(state, model_id), name=model_id)
            return opened[model_id]

        self.reporter.phase(
            f"choosing the recommended model on {split}",
            total=1 + (len(candidates) if split == "select" else 0),
        )
        agg_record.scores["validation"] = self._scores(agg, agg_record.fingerprint, "validation")
        self.reporter.advance()
        if split == "select":
            for model_id in candidates:
                rec = state.registry[model_id]
                rec.scores["select"] = self._scores(source(model_id), rec.fingerprint, "select")
                self.reporter.advance()
        chosen = choose(
            [
                Candidate(m, state.registry[m].scores["validation"], state.registry[m].scores.get("select"))
                for m in candidates
            ],
            split=split,
        ).model_id
        if split == "validation":
            self.reporter.log(
                f"no select split: the recommended model ({chosen}) is chosen on validation, the split that "
                "drove evolution, so its validation score is optimistic; give the tasks select items"
            )
        copy_model(self._model_path(state, chosen), self.paths.final, template=self._base)
        choice = {
            "split": split,
            "model": chosen,
            "path": self.paths.final.name,  # relative to the run folder, which may move
            "top_k": cfg.final.top_k,
            "soups": soup_trace,
            "candidates": [
                {"model": m, **{k: v for k, v in state.registry[m].scores.items() if k != "test"}}
                for m in candidates
            ],
        }
        atomic_write_text(self.paths.choice, json.dumps(choice, indent=1) + "\n")
        crash_point("after-final", state.generation)
        # Test scores are for reporting only; they are made after the choice and never read by it.
        to_test = [
            BASE_ID,
            *(expert_id(t) for t in cfg.task_names),
            *best_ids,
            best_average,
            *candidates,
            AGGREGATE_ID,
        ]
        order = list(dict.fromkeys(to_test))
        self.reporter.phase("final evaluation on test", total=len(order))
        for model_id in order:
            rec = state.registry[model_id]
            rec.scores["test"] = self._scores(source(model_id), rec.fingerprint, "test")
            self.reporter.advance()
        state.final = {
            "aggregate": {
                "path": str(self.paths.aggregate),
                "elites": dict(zip(cfg.task_names, best_ids, strict=True)),
                "weights": dict(zip(cfg.task_names, weights, strict=True)),
                "validation_scores": agg_record.scores["validation"],
                "test_scores": agg_record.scores["test"],
            },
            "best_per_task": {
                t: {"model": m, "score": s}
                for t, m, s in zip(cfg.task_names, best_ids, best_scores, strict=True)
            },
            "best_average": best_average,
            "recommended": choice,
            "test_scores": {m: state.registry[m].scores["test"] for m in order},
        }
        state.finished = True
        state.save(self.paths.checkpoint)


def crash_point(point: str, generation: int) -> None:
    """Kill this process with SIGKILL here when ``CYCLEQD_CRASH_AT`` is ``point:generation``.

    A testing hook: the resume tests stop runs at exact places of the write sequence (after a child's
    weights, after its metrics line, after the checkpoint, after the aggregate) and check that the
    resumed run ends as an uninterrupted one. Unset, it costs one dictionary lookup.

    Args:
        point: Name of the place.
        generation: The generation being written.
    """
    target = os.environ.get("CYCLEQD_CRASH_AT")
    if target and target == f"{point}:{generation}":
        os.kill(os.getpid(), signal.SIGKILL)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _line_generation(line: str) -> int | None:
    try:
        return int(json.loads(line)["generation"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _append_line(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(data, allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
