"""One generation's work: build a child from two parents and evaluate it.

The driver draws a :class:`Job` (who the parents are, which seed); :func:`execute_job` does the heavy
part and can run in the driver's process (local runner) or next to a GPU in a worker (Ray runner).
Building streams tensor by tensor from the parents' memory-mapped files: peak memory is the child
being built plus a few tensors, whatever the size of the parents.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from cycleqd.engine.job import Job
from cycleqd.evaluation.base import TaskResult
from cycleqd.evaluation.evaluator import Evaluator
from cycleqd.operators import CrossoverPlan, Mutation, crossover_tensor, draw_crossover, mutate_one
from cycleqd.operators.blocked import weighted_sum
from cycleqd.operators.crossover import LINEAR, MergeCrossover, draw_scale
from cycleqd.operators.mutation import FactorSummary, LowRank, MutationRecord, is_mutable
from cycleqd.operators.random import make_generator
from cycleqd.seeding import derive_seed
from cycleqd.weights import ModelSource, open_model
from cycleqd.weights.pages import MappedPages


class BuiltChild(NamedTuple):
    """A child built in memory (see :meth:`ChildBuilder.build`).

    Attributes:
        weights: Its tensors, in the storage dtype.
        fingerprint: Its recipe fingerprint.
        plan: The drawn crossover coefficients.
        mutation: The mutation's record.
    """

    weights: dict[str, torch.Tensor]
    fingerprint: str
    plan: CrossoverPlan
    mutation: dict[str, Any]


@dataclass
class JobOutcome:
    """What a job produced.

    Attributes:
        job: The job.
        scores: Validation score per task, or ``None`` when it failed.
        error: Why it failed.
        fingerprint: Hash of the child's tensors.
        crossover: The drawn crossover coefficients.
        mutation: The mutation record.
        seconds: Wall time of the build and the evaluation.
        weights: The child's weights when they are in this process (local runner); ``None`` when they
            stay with a remote worker.
        worker: Which worker ran it (Ray runner).
    """

    job: Job
    scores: dict[str, float] | None
    error: str | None
    fingerprint: str | None
    crossover: dict[str, Any] | None
    mutation: dict[str, Any] | None
    seconds: dict[str, float] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None
    worker: str | None = None


class ParentCache:
    """Open parent sources, most recently used kept (their memory-mapped pages stay warm).

    Args:
        size: How many sources to keep open.
    """

    def __init__(self, size: int = 4) -> None:
        self._size = max(size, 1)
        self._open: OrderedDict[str, ModelSource] = OrderedDict()

    def get(self, path: str) -> ModelSource:
        """The source for a weights path, opened if needed."""
        src = self._open.get(path)
        if src is None:
            src = open_model(path)
            self._open[path] = src
            if len(self._open) > self._size:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(path)
        return src


def _low_rank_dtype(out_dtype: torch.dtype) -> torch.dtype:
    """The dtype a low-rank mutation is multiplied in for a child stored in ``out_dtype``."""
    return torch.bfloat16 if out_dtype == torch.bfloat16 else torch.float32


@dataclass
class ChildBuilder:
    """Everything needed to build children: the base, the operators and their settings.

    Attributes:
        base: The base model θ0.
        mutation: The mutation.
        crossover_mean: μ of ω.
        crossover_std: σ of ω.
        per_layer: Per-layer crossover.
        layer_std: Per-layer crossover around one model-wise draw with this σ (``None``: independent
            draws per layer group).
        scale_std: σ of the log of the drawn scale of the child's task vector (0: no scale).
        merge: How the parents' task vectors are combined (default: the weighted sum).
        skip_patterns: Tensor names never mutated.
        dtype: Storage dtype of children (``None`` keeps the base's).
        parents: Cache of open parent sources.

    A child handed back with :meth:`recycle` once it has been saved or discarded lends its memory to
    the next build: filling fresh memory costs a page fault per 4 KiB page (about 2.5 s for a 2 GB
    child on a 2-core virtual machine, more than the arithmetic), filling memory already held does not.
    """

    base: ModelSource
    mutation: Mutation
    crossover_mean: float = 1.0
    crossover_std: float = 0.01
    per_layer: bool = False
    layer_std: float | None = None
    scale_std: float = 0.0
    merge: MergeCrossover = LINEAR
    skip_patterns: Sequence[str] = ("norm",)
    dtype: torch.dtype | None = torch.float32
    parents: ParentCache = field(default_factory=ParentCache)
    _release: MappedPages = field(default_factory=MappedPages, repr=False)
    _spare: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def recycle(self, weights: Mapping[str, torch.Tensor] | None) -> None:
        """Hand back a built child whose tensors nobody reads any more; the next build writes into them.

        Only tensors this builder allocated qualify (tensors shared with the base's files never do).
        At most one child's memory is kept.

        Args:
            weights: The child's tensors (``None`` is accepted and ignored).
        """
        if not weights:
            return
        self._spare = {
            name: t
            for name, t in weights.items()
            if t.device.type == "cpu" and t.is_contiguous() and t.untyped_storage().resizable()
        }

    def _output(self, name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor | None:
        spare = self._spare.pop(name, None)
        if spare is not None and spare.shape == shape and spare.dtype == dtype:
            return spare
        return None

    def plan(self, job: Job) -> CrossoverPlan:
        """Draw the job's crossover coefficients (from its own seed)."""
        return draw_crossover(
            generator=make_generator(job.seed, "crossover"),
            n_parents=len(job.parents),
            mean=self.crossover_mean,
            std=self.crossover_std,
            names=list(self.base),
            per_layer=self.per_layer,
            layer_std=self.layer_std,
            scale=draw_scale(generator=make_generator(job.seed, "crossover-scale"), std=self.scale_std),
        )

    def stream(
        self, job: Job, plan: CrossoverPlan, summary: FactorSummary, counts: dict[str, int]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the child's tensors one at a time: θ0 + mutate(Σ c_i τ_i), in storage dtype.

        With a linear crossover and an additive mutation (svd-expert, gaussian, none), this is
        Σ c_i θ_i + (1 − Σ c_i) θ0 + δ, computed without forming task vectors, and without reading
        the base where the coefficients sum to 1 (no drawn scale). Pages of the parents' files (and of
        the base's, when it is read) are released after each tensor, so the process holds the child
        and a few tensors, not the parents.
        A low-rank mutation A B of a child stored in bfloat16 is multiplied in bfloat16 (products
        summed in float32, the result rounded once): about 3x faster than a float32 product on CPUs
        with bfloat16 instructions, and its error, within a few 2^-9 |δ|, stays far below the child's
        own storage rounding of 2^-9 |θ| (|δ| ≪ |θ|).

        Args:
            job: The job.
            plan: Its crossover plan.
            summary: Collects the drawn mutation factors.
            counts: Collects ``mutated``/``skipped`` counts.

        Yields:
            (name, tensor) pairs in the base's order.
        """
        parents = [self.parents.get(p) for p in job.parent_paths]
        self._release.refresh()  # parents closed since the last build may have left their addresses
        mutation_seed = derive_seed(job.seed, "mutation")
        expert = job.active_task if self.mutation.uses_expert else None
        # Additive mutations need no τ: θ_child = Σ c_i θ_i + (1 − Σ c_i) θ0 + δ.
        direct = (self.mutation.additive or self.mutation.identity) and self.merge.is_linear
        for name in self.base:
            if not self.base.dtype(name).is_floating_point:
                yield name, self.base[name]
                continue
            inputs = [p[name] for p in parents]
            weights = plan.weights_for(name)
            mutable = is_mutable(name, len(inputs[0].shape), self.skip_patterns)
            out_dtype = self.dtype or self.base.dtype(name)
            if direct:
                low_rank = None
                if mutable and not self.mutation.identity:
                    d, factors = self.mutation.delta(
                        name, inputs[0].shape, generator=make_generator(mutation_seed, name), expert=expert
                    )
                    if isinstance(d, LowRank):
                        low_rank = (d.a, d.b)
                    else:
                        inputs, weights = [*inputs, d], [*weights, 1.0]
                    if factors is not None:
                        summary.add(factors)
                    counts["mutated"] += 1
                else:
                    counts["skipped"] += 1
                rest = 1.0 - sum(plan.weights_for(name))
                if abs(rest) > 1e-12:  # a drawn scale: the base keeps the remaining share
                    inputs, weights = [*inputs, self.base[name]], [*weights, rest]
                out = weighted_sum(
                    inputs,
                    weights,
                    low_rank=low_rank,
                    out_dtype=out_dtype,
                    out=self._output(name, inputs[0].shape, out_dtype),
                    low_rank_dtype=_low_rank_dtype(out_dtype),
                )
            else:
                base_tensor = self.base[name]
                b32 = base_tensor.float()
                generator = make_generator(job.seed, "crossover", name) if self.merge.seeded else None
                tau = crossover_tensor(
                    name,
                    [torch.sub(x, b32) for x in inputs],
                    plan,
                    merge=self.merge,
                    base=b32,
                    generator=generator,
                )
                tau, factors, changed = mutate_one(
                    name,
                    tau,
                    self.mutation,
                    seed=mutation_seed,
                    skip_patterns=self.skip_patterns,
                    expert=expert,
                )
                counts["mutated" if changed else "skipped"] += 1
                if factors is not None:
                    summary.add(factors)
                out = tau.add_(b32).to(out_dtype)
                inputs = [*inputs, base_tensor]  # the base's pages go with the parents'
            self._release(inputs)
            del inputs
            yield name, out

    def build(self, job: Job) -> BuiltChild:
        """Build a child in memory.

        Args:
            job: The job.

        Returns:
            The child's weights, fingerprint, crossover plan and mutation record.
        """
        plan = self.plan(job)
        summary = FactorSummary()
        counts = {"mutated": 0, "skipped": 0}
        weights = dict(self.stream(job, plan, summary, counts))
        self._spare = {}  # memory of a different shape is not kept
        record = MutationRecord(
            kind=self.mutation.kind,
            params=self.mutation.params(),
            mutated=counts["mutated"],
            skipped=counts["skipped"],
            factors=summary.to_record(),
            expert=job.active_task if self.mutation.uses_expert else None,
        )
        return BuiltChild(weights, self.recipe_fingerprint(job, plan), plan, record.to_record())

    def recipe_fingerprint(self, job: Job, plan: CrossoverPlan) -> str:
        """A child's fingerprint from what determines its tensors, without hashing them.

        The parents' fingerprints, the seed, the drawn crossover weights, the mutation and its settings,
        the skipped names and the storage dtype fix every bit of a child (the build is deterministic),
        so hashing them identifies the child as well as hashing its bytes, at no cost: hashing the
        bytes of an 8B child would take about as long as building it.

        Args:
            job: The child's job.
            plan: Its crossover plan.

        Returns:
            A 32-character hexadecimal fingerprint.
        """
        recipe = {
            "parents": list(job.parent_fingerprints) or list(job.parent_paths),
            "seed": job.seed,
            "expert": job.active_task if self.mutation.uses_expert else None,
            "crossover": plan.to_record(),
            "mutation": [self.mutation.kind, self.mutation.params()],
            "skip": list(self.skip_patterns),
            "dtype": str(self.dtype),
        }
        if not self.merge.is_linear:  # absent for the paper's crossover: fingerprints stay as they were
            recipe["merge"] = self.merge.describe()
        blob = json.dumps(recipe, sort_keys=True, default=str).encode()
        return hashlib.blake2b(blob, digest_size=16).hexdigest()


def scores_by_task(results: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, float]:
    """Check and extract the score of every task from an evaluation.

    Args:
        results: Task name → result (:class:`~cycleqd.evaluation.base.TaskResult`).
        tasks: Tasks that must all be present.

    Returns:
        Task name → score.

    Raises:
        ValueError: If a task is missing or its score is not a finite number in [0, 1].
    """
    scores = {}
    for task in tasks:
        if task not in results:
            raise ValueError(f"task {task} returned no result")
        result = results[task]
        if not isinstance(result, TaskResult):  # TaskResult checks its score when it is made
            raise ValueError(f"task {task} returned a {type(result).__name__}, not a TaskResult")
        scores[task] = result.score
    return scores


def execute_job(
    job: Job, builder: ChildBuilder, evaluator: Evaluator, *, keep_weights: bool = True
) -> JobOutcome:
    """Build and evaluate one child; any exception becomes a failed outcome with its reason.

    Args:
        job: The job.
        builder: Builds the child.
        evaluator: Scores it on the validation split.
        keep_weights: Return the child's weights in the outcome.

    Returns:
        The outcome.
    """
    t0 = time.perf_counter()
    plan_record = mutation_record = fingerprint = None
    try:
        weights, fingerprint, plan, mutation_record = builder.build(job)
        plan_record = plan.to_record()
        t1 = time.perf_counter()
        results = evaluator.evaluate(weights, fingerprint=fingerprint, split="validation")
        scores = scores_by_task(results, list(evaluator.tasks))
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        return JobOutcome(
            job=job,
            scores=None,
            error=f"{type(exc).__name__}: {exc}{where}",
            fingerprint=fingerprint,
            crossover=plan_record,
            mutation=mutation_record,
            seconds={"total": time.perf_counter() - t0},
        )
    t2 = time.perf_counter()
    return JobOutcome(
        job=job,
        scores=scores,
        error=None,
        fingerprint=fingerprint,
        crossover=plan_record,
        mutation=mutation_record,
        seconds={"build": t1 - t0, "evaluate": t2 - t1},
        weights=weights if keep_weights else None,
    )
