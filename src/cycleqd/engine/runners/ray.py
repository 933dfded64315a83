"""The Ray runner: N workers, each resident on its device, build and evaluate children in parallel.

The driver (the engine) draws jobs and alone owns the archives and the registry; a job names the two
parents by id and by path in the run folder, which every worker can read (a shared store: a local
disk on one machine, a shared file system on a cluster). A worker builds the child next to its device
by streaming the parents' memory-mapped tensors (the recently used parents stay mapped and warm),
evaluates it with its own resident model, returns the scores and keeps the child's weights until the
driver says whether an archive took it (then the worker writes them to the run folder) or not.

Up to ``workers`` jobs are in flight: while one worker evaluates, the others do too (asynchronous
steady state, as the official code does). The parents of generation ``g`` are drawn from the archives
as they stand after generation ``g − workers`` was incorporated (see :mod:`cycleqd.engine.loop`), and
outcomes are incorporated in generation order, so a run is reproducible for a given worker count,
whatever order the jobs finish in.

A worker that dies takes its job and the weights it kept with it: the job is submitted again to a
fresh worker (children are deterministic functions of their job, so the retry gives the same child),
and a child whose weights were lost before they were written is rebuilt from its job.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cycleqd.engine.assembly import WorkerSpec, assemble
from cycleqd.engine.children import Job, JobOutcome, execute_job
from cycleqd.engine.runners.base import Runner
from cycleqd.errors import CycleQDError

if TYPE_CHECKING:
    from cycleqd.config import RunnerConfig

__all__ = ["CycleQDWorker", "RayRunner", "WorkerSpec"]


class CycleQDWorker:
    """The body of a Ray actor: one resident model, a parent cache, children awaiting a verdict.

    Args:
        spec: The worker's settings.
        name: Its name in outcomes and messages.
    """

    def __init__(self, spec: WorkerSpec, name: str) -> None:
        assembly = assemble(spec)  # the same builder and evaluator options as the driver's
        self.name = name
        self.evaluator = assembly.evaluator
        self.builder = assembly.builder
        self._kept: dict[str, Any] = {}
        self.durable = assembly.config.models.durable_writes

    def pid(self) -> int:
        """The worker's process id (tests kill workers by it)."""
        return os.getpid()

    def execute(self, job: Job) -> JobOutcome:
        """Build and evaluate a child; keep its weights until :meth:`persist` or :meth:`discard`."""
        outcome = execute_job(job, self.builder, self.evaluator)
        if outcome.weights is not None:
            self._kept[job.child_id] = outcome.weights
        outcome.weights = None
        outcome.worker = self.name
        return outcome

    def persist(self, child_id: str, path: str) -> bool:
        """Write a kept child's weights to ``path``; False if this worker does not hold them."""
        from cycleqd.weights import save_model

        weights = self._kept.pop(child_id, None)
        if weights is None:
            return False
        save_model(weights, path, template=self.builder.base, dtype=self.builder.dtype, durable=self.durable)
        self.builder.recycle(weights)
        return True

    def rebuild_and_persist(self, job: Job, path: str) -> None:
        """Build a child again from its job (its first worker died) and write it."""
        from cycleqd.weights import save_model

        weights = self.builder.build(job).weights
        save_model(weights, path, template=self.builder.base, dtype=self.builder.dtype, durable=self.durable)
        self.builder.recycle(weights)

    def discard(self, child_id: str) -> None:
        """Forget a kept child."""
        self.builder.recycle(self._kept.pop(child_id, None))


#: Worker methods that must not wait behind a running build and evaluation.
_IO_GROUP = "io"


class RayRunner(Runner):
    """Runs jobs on Ray actors.

    Each worker runs one job at a time; writing or forgetting a kept child (``persist``/``discard``)
    runs in a second thread of the worker (a Ray concurrency group), so the driver never waits for a
    worker's next build and evaluation to finish before its verdict on the previous child lands.

    Args:
        spec: Settings sent to every worker.
        workers: Number of workers (and of jobs in flight).
        address: Ray cluster address; ``None`` or ``"local"`` starts (or joins) a local cluster.
        cpus_per_worker: CPUs each worker reserves.
        gpus_per_worker: GPUs each worker reserves.
        max_retries: How many times one job may be retried after its worker died.
        start_timeout_s: How long the workers may take to be placed and to load their model.

    Raises:
        CycleQDError: When Ray is missing, or the workers cannot be placed on the cluster in time.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        workers: int,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        max_retries: int = 3,
        start_timeout_s: float = 600.0,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise CycleQDError(
                "runner.kind is ray but Ray is not installed; install the extra: pip install 'cycleqd[ray]'"
            ) from None
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            if address in (None, "", "local"):
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        self.slots = workers
        self._spec = spec
        self._actor_cls = ray.remote(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            max_restarts=0,
            concurrency_groups={_IO_GROUP: 1},
        )(CycleQDWorker)
        self._max_retries = max_retries
        self._serial = 0
        self._workers: dict[str, Any] = {}
        self._running: dict[Any, tuple[Job, str]] = {}  # object ref → (job, worker name)
        self._idle: list[str] = []
        self._queue: list[Job] = []
        self._retries: dict[int, int] = {}
        self.restarts = 0
        self._start_timeout_s = start_timeout_s
        self._per_worker = (cpus_per_worker, gpus_per_worker)
        for _ in range(workers):
            self._idle.append(self._start_worker())
        self._wait_started()

    @classmethod
    def from_config(cls, spec: WorkerSpec, r: RunnerConfig) -> RayRunner:
        """A runner whose workers are assembled from ``spec``, placed as the ``runner`` config says.

        Args:
            spec: What every worker builds its builder and evaluator from.
            r: The run config's ``runner`` section.

        Returns:
            The runner, its workers started.
        """
        return cls(
            spec,
            workers=r.workers,
            address=r.address,
            cpus_per_worker=r.cpus_per_worker,
            gpus_per_worker=r.gpus_per_worker,
            max_retries=r.max_retries,
            start_timeout_s=r.start_timeout_s,
        )

    # -- workers ---------------------------------------------------------------------------------
    def _start_worker(self) -> str:
        name = f"worker-{self._serial}"
        self._serial += 1
        self._workers[name] = self._actor_cls.remote(self._spec, name)
        return name

    def _io(self, actor: Any, method: str) -> Any:
        return getattr(actor, method).options(concurrency_group=_IO_GROUP)

    def _wait_started(self, names: list[str] | None = None) -> None:
        """Wait (``start_timeout_s``) until the named workers, or all, answer; else close and raise."""
        ray = self._ray
        timeout = self._start_timeout_s
        workers = self.slots
        cpus_per_worker, gpus_per_worker = self._per_worker
        waited = names if names is not None else list(self._workers)
        refs = [self._io(self._workers[n], "pid").remote() for n in waited]
        what = (
            "the replacement of a dead Ray worker was not"
            if names
            else f"the {workers} Ray workers were not all"
        )
        try:
            ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            have = ray.cluster_resources()
            self.close()
            raise CycleQDError(
                f"{what} up after {timeout:.0f} s: the config asks for "
                f"{workers} × ({cpus_per_worker} CPU, {gpus_per_worker} GPU) and the cluster has "
                f"{have.get('CPU', 0):g} CPU and {have.get('GPU', 0):g} GPU; lower runner.workers or the "
                "per-worker resources, or raise runner.start_timeout_s if the model is slow to load"
            ) from None
        except ray.exceptions.RayActorError as exc:
            self.close()
            raise CycleQDError(f"a Ray worker failed to start: {exc}") from exc

    def worker_pids(self) -> dict[str, int]:
        """Process id of each live worker."""
        return {n: self._ray.get(self._io(a, "pid").remote()) for n, a in self._workers.items()}

    def _worker_died(self, name: str, job: Job | None = None) -> None:
        """Replace a dead worker once and queue again the jobs it was running (``job`` included)."""
        lost = [job] if job is not None else []
        for ref, (j, w) in list(self._running.items()):
            if w == name:
                del self._running[ref]
                lost.append(j)
        if name in self._workers:
            with contextlib.suppress(Exception):  # an actor only unreachable for now must not come back
                self._ray.kill(self._workers[name])
            del self._workers[name]
            if name in self._idle:
                self._idle.remove(name)
            replacement = self._start_worker()
            self._idle.append(replacement)
            self.restarts += 1
            # Wait until the replacement is up: one that cannot be placed (a lost node) would
            # otherwise hold its job for ever.
            self._wait_started(names=[replacement])
        for j in sorted(lost, key=lambda j: j.generation, reverse=True):
            tries = self._retries.get(j.generation, 0) + 1
            if tries > self._max_retries:
                raise CycleQDError(
                    f"generation {j.generation}: its worker died {tries} times; see the Ray logs "
                    "(out of memory is the usual cause: lower the model's memory footprint or the workers "
                    "per node); the run resumes from its checkpoint with `cycleqd resume`"
                )
            self._retries[j.generation] = tries
            self._queue.insert(0, j)
        self._dispatch()

    # -- Runner ----------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:  # noqa: D102
        self._queue.append(job)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            job = self._queue.pop(0)
            name = self._idle.pop(0)
            ref = self._workers[name].execute.remote(job)
            self._running[ref] = (job, name)

    def next_outcome(self) -> JobOutcome:  # noqa: D102
        ray = self._ray
        while True:
            if not self._running:
                raise RuntimeError("next_outcome() called with no job in flight")
            done, _ = ray.wait(list(self._running), num_returns=1)
            ref = done[0]
            job, name = self._running.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayActorError:
                self._worker_died(name, job)
                continue
            self._idle.append(name)
            self._dispatch()
            return outcome

    def persist(self, outcome: JobOutcome, path: Path) -> None:  # noqa: D102
        ray = self._ray
        name = outcome.worker or ""
        if name in self._workers:
            try:
                if ray.get(self._io(self._workers[name], "persist").remote(outcome.job.child_id, str(path))):
                    return
            except ray.exceptions.RayActorError:
                self._worker_died(name)
        # Its worker died after evaluating it: build it again (deterministically) on another worker,
        # an idle one if there is one. The rebuild runs in the worker's default group, after the job it
        # may be running: two builds at once in one worker would share its builder and double its memory.
        for _ in range(self._max_retries + 1):
            other = self._idle[0] if self._idle else next(iter(self._workers))
            try:
                ray.get(self._workers[other].rebuild_and_persist.remote(outcome.job, str(path)))
                return
            except ray.exceptions.RayActorError:
                self._worker_died(other)
        raise CycleQDError(
            f"{outcome.job.child_id} could not be written: every worker asked to rebuild it died; see the "
            "Ray logs; the run resumes from its checkpoint with `cycleqd resume`"
        )

    def discard(self, outcome: JobOutcome) -> None:  # noqa: D102
        actor = self._workers.get(outcome.worker or "")
        if actor is not None:
            self._io(actor, "discard").remote(outcome.job.child_id)

    def close(self) -> None:  # noqa: D102
        for actor in self._workers.values():
            with contextlib.suppress(Exception):  # already gone
                self._ray.kill(actor)
        self._workers.clear()
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()  # the connection this runner opened (and a local cluster it started)
