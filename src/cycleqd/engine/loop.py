"""The CycleQD loop: initialise the archives with the experts, make one child per generation, aggregate.

The driver alone owns the archives and the registry. Jobs are drawn in generation order and their
outcomes are incorporated in generation order, whatever order they finish in. With ``W`` job slots
(1 for the local runner, the number of workers for Ray), the parents of generation ``g`` are drawn
from the archives as they stand after generation ``g − W`` was incorporated; the jobs drawn but not yet
incorporated are part of the checkpoint. A run is therefore a deterministic function of its config
and ``W``, and a run stopped at any moment and resumed ends exactly as one never stopped.

The run's start (:mod:`~cycleqd.engine.start`), end (:mod:`~cycleqd.engine.finalise`) and its
folder's upkeep, write order and repair on resume (:mod:`~cycleqd.engine.run_folder`) have modules of
their own; this one draws jobs, incorporates their outcomes and checkpoints each generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cycleqd.atomic import atomic_write_text
from cycleqd.config import RunConfig, check_model_paths, dump_config, load_config
from cycleqd.engine.assembly import WorkerSpec, build_child_builder, build_evaluator, build_mutation
from cycleqd.engine.children import ChildBuilder, Job, JobOutcome, scores_by_task
from cycleqd.engine.finalise import Finalisation
from cycleqd.engine.generation_line import GenerationLine
from cycleqd.engine.model_registry import (
    AGGREGATE_ID,
    BASE_ID,
    ModelKind,
    ModelRecord,
    ModelStatus,
    child_id,
    expert_id,
)
from cycleqd.engine.paths import RunPaths
from cycleqd.engine.reporting import NullReporter, Reporter
from cycleqd.engine.run_folder import (
    append_line,
    collect_garbage,
    crash_point,
    model_path,
    recover_folder,
    refuse_taken,
    run_lock,
)
from cycleqd.engine.runners.base import Runner
from cycleqd.engine.start import RunStart, distill_refusal
from cycleqd.engine.state import RunState
from cycleqd.errors import CycleQDError
from cycleqd.evaluation.base import SPLITS
from cycleqd.evaluation.evaluator import Evaluator
from cycleqd.evaluation.spec import build_tasks, check_compatible
from cycleqd.operators import is_mutable
from cycleqd.qd import ArchiveSet, archive_metrics, select_parents
from cycleqd.seeding import derive_seed
from cycleqd.weights import ModelSource, open_model


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
        refuse_taken(paths, out)
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
                self._distill_skipped = distill_refusal(self.cfg, self._tasks, self._base)
            self._write_pending_config()
            if self.paths.checkpoint.exists():
                state = RunState.load(self.paths.checkpoint)
                recover_folder(self.paths, state)
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
                Finalisation(
                    cfg=self.cfg,
                    paths=self.paths,
                    base=self._base,
                    score=self._scores,
                    choice_split=self._choice_split(),
                    reporter=self.reporter,
                ).run(state)
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
        assert self._base is not None
        start = RunStart(
            cfg=self.cfg,
            paths=self.paths,
            base=self._base,
            experts=self._experts(),
            evaluator=self.evaluator,
            score=self._scores,
            reporter=self.reporter,
            distill_skipped=self._distill_skipped,
        )
        archives, registry, fingerprints = start.archives()
        self._prepare_mutation_cache(fingerprints)
        state = RunState(
            seed=self.cfg.seed,
            tasks=self.cfg.task_names,
            generation=0,
            generations=self.cfg.generations,
            archives=archives,
            registry=registry,
            initial_metrics=self._archive_metrics(archives),
        )
        self._fill_in_flight(state, slots=self._slots())
        state.save(self.paths.checkpoint)
        return state

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
            parent_paths=tuple(model_path(self.paths, state.registry, p) for p in parents),
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
            collect_garbage(self.paths, state)
            self.reporter.advance(line.to_json())
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

    def _incorporate(self, state: RunState, outcome: JobOutcome, runner: Runner) -> GenerationLine:
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
        line = GenerationLine(
            generation=job.generation,
            active_task=job.active_task,
            parents=list(job.parents),
            child=job.child_id,
            status=record.status.value,
            scores=outcome.scores,
            error=outcome.error,
            archives=decisions,
            released=released,
            metrics=self._archive_metrics(state.archives),
            crossover=outcome.crossover,
            mutation=outcome.mutation,
            seconds=outcome.seconds,
            worker=outcome.worker,
            time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        append_line(self.paths.metrics, line.to_json())
        crash_point("after-metrics", job.generation)
        return line
