"""The baselines CycleQD is compared with, each tuned on the validation split only.

Every merge goes through the merge library (:func:`cycleqd.operators.merge.merge_models`):

- ``average``: the mean of the experts' weights (``linear``), nothing to tune;
- ``task-arithmetic``: θ0 + λ Σ τ_k, one λ from a grid;
- ``task-arithmetic-per-expert``: θ0 + Σ λ_k τ_k, coordinate ascent over each λ_k from the best
  single λ;
- ``ties``: TIES-merging, density and λ from a grid;
- ``fine-tune-all``: the base fine-tuned on the union of the experts' data for as many steps as the
  three experts together (trained with the recipe, nothing to tune).

Every method is chosen by the rule CycleQD's recommendation follows (:mod:`cycleqd.engine.choice`):
its grid is scored on the validation split, its ``top_k`` settings by validation average are scored
again on the select split, and the best there is the method's row (ties: the higher validation
average, then the earlier, simpler setting). The choice never reads the test split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cycleqd.demo.scoring import Scorer, average
from cycleqd.engine.choice import Candidate, choose, top_by_validation
from cycleqd.operators.merge import merge_models
from cycleqd.weights import ModelSource, fingerprint_tensors, open_model, save_model


@dataclass(frozen=True)
class Grids:
    """The validation grids of the tuned baselines.

    Attributes:
        lambdas: λ of task arithmetic.
        per_expert: Values tried for each expert's λ_k.
        per_expert_passes: Rounds of coordinate ascent over the experts.
        ties_densities: Densities of TIES.
        ties_lambdas: λ of TIES.
    """

    lambdas: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
    per_expert: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2)
    per_expert_passes: int = 2
    ties_densities: tuple[float, ...] = (0.3, 0.5, 0.8)
    ties_lambdas: tuple[float, ...] = (0.8, 1.0, 1.3, 1.6)

    @classmethod
    def quick(cls) -> Grids:
        """Small grids for quick runs and tests."""
        return cls(
            lambdas=(0.5, 1.0),
            per_expert=(0.5, 1.0),
            per_expert_passes=1,
            ties_densities=(0.5,),
            ties_lambdas=(1.0,),
        )


@dataclass
class Baseline:
    """A tuned baseline.

    Attributes:
        name: Row name in the results.
        method: The merge method (``fine-tune`` for the fine-tuned model).
        params: The chosen hyper-parameters.
        validation: Validation scores of the chosen setting.
        select: Select scores of the chosen setting.
        tried: Every setting tried, with its validation (and, for the top ones, select) scores, in order.
        folder: Where the chosen model is saved.
    """

    name: str
    method: str
    params: dict[str, Any]
    validation: dict[str, float]
    select: dict[str, float] = field(default_factory=dict)
    tried: list[dict[str, Any]] = field(default_factory=list)
    folder: Path | None = None


Weights = dict[str, torch.Tensor]


class _Search:
    """Scores settings of one method on validation, then its best ones on select."""

    def __init__(self, scorer: Scorer, build: Callable[[dict[str, Any]], Weights], tick: Callable[[], None]):
        self.scorer, self.build, self.tick = scorer, build, tick
        self.tried: list[dict[str, Any]] = []
        self.best: float | None = None

    def try_(self, params: dict[str, Any]) -> float:
        weights = self.build(params)
        scores = self.scorer.scores(weights, split="validation", fingerprint=fingerprint_tensors(weights))
        avg = average(scores)
        self.tried.append({"params": params, "validation": scores, "average": avg})
        self.best = avg if self.best is None else max(self.best, avg)
        self.tick()
        return avg

    def choose(self, top_k: int) -> tuple[dict[str, Any], Weights]:
        """The setting chosen by the select rule, with its weights (rebuilt) and scores recorded."""
        top = top_by_validation({str(i): t["validation"] for i, t in enumerate(self.tried)}, top_k)
        candidates = []
        for key in top:
            entry = self.tried[int(key)]
            weights = self.build(entry["params"])
            entry["select"] = self.scorer.scores(
                weights, split="select", fingerprint=fingerprint_tensors(weights)
            )
            candidates.append(Candidate(key, entry["validation"], entry["select"]))
        chosen = self.tried[int(choose(candidates, split="select").model_id)]
        return chosen, self.build(chosen["params"])


def merge(
    base: ModelSource,
    experts: Sequence[ModelSource],
    method: str,
    *,
    weights: Sequence[float] | None = None,
    densities: Sequence[float] | None = None,
    **params: Any,
) -> Weights:
    """A merged model in memory (float32), through the merge library.

    Args:
        base: θ0.
        experts: The experts, in task order.
        method: A registered merge method.
        weights: Per-expert weights.
        densities: Per-expert densities.
        **params: Global parameters of the method (``lambda`` as ``scale``).

    Returns:
        The merged weights.
    """
    return dict(
        merge_models(
            base,
            list(experts),
            method=method,
            weights=weights,
            densities=densities,
            out_dtype=torch.float32,
            **params,
        )
    )


def tune_baselines(
    scorer: Scorer,
    *,
    base: Path,
    experts: Mapping[str, Path],
    union: Path,
    out: Path,
    grids: Grids | None = None,
    top_k: int = 8,
    progress: Callable[[str], None] | None = None,
) -> list[Baseline]:
    """Tune every baseline (grid on validation, the ``top_k`` best again on select) and save the choices.

    Args:
        scorer: Scores models on the demo's tasks.
        base: The base model folder.
        experts: Task → expert folder, in task order.
        union: The model fine-tuned on all experts' data.
        out: Folder where each chosen model is saved (``out/<name>``).
        grids: The grids (default: :class:`Grids`).
        top_k: Settings of each method scored again on select (as CycleQD's ``final.top_k``).
        progress: Called with the baseline's name after each evaluated setting.

    Returns:
        The baselines, in a fixed order.
    """
    grids = grids or Grids()
    b = open_model(base)
    es = [open_model(experts[t]) for t in experts]
    k = len(es)
    results: list[Baseline] = []

    def run(
        name: str, method: str, build: Callable[[dict[str, Any]], Weights], settings: list[dict[str, Any]]
    ) -> _Search:
        search = _Search(scorer, build, lambda: progress(name) if progress else None)
        for params in settings:
            search.try_(params)
        return search

    def finish(name: str, method: str, search: _Search) -> None:
        chosen, weights = search.choose(top_k)
        folder = save_model(weights, out / name, template=b, dtype=torch.float32)
        results.append(
            Baseline(
                name, method, chosen["params"], chosen["validation"], chosen["select"], search.tried, folder
            )
        )

    avg = run("average", "linear", lambda p: merge(b, es, "linear"), [{}])
    finish("average", "linear", avg)

    ta = run(
        "task-arithmetic",
        "task_arithmetic",
        lambda p: merge(b, es, "task_arithmetic", scale=p["lambda"]),
        [{"lambda": lam} for lam in grids.lambdas],
    )
    finish("task-arithmetic", "task_arithmetic", ta)

    # The per-expert search climbs on validation from the best single λ there.
    start = float(max(ta.tried, key=lambda t: t["average"])["params"]["lambda"])
    per = _Search(
        scorer,
        lambda p: merge(b, es, "task_arithmetic", weights=p["lambdas"]),
        lambda: progress("task-arithmetic-per-expert") if progress else None,
    )
    current = [start] * k
    per.try_({"lambdas": list(current)})
    for _ in range(grids.per_expert_passes):
        changed = False
        for i in range(k):
            for value in grids.per_expert:
                if value == current[i]:
                    continue
                trial = [*current[:i], value, *current[i + 1 :]]
                before = per.best if per.best is not None else -1.0
                if per.try_({"lambdas": trial}) > before:
                    current, changed = trial, True
        if not changed:
            break
    finish("task-arithmetic-per-expert", "task_arithmetic", per)

    ties = run(
        "ties",
        "ties",
        lambda p: merge(b, es, "ties", densities=[p["density"]] * k, scale=p["lambda"]),
        [{"density": d, "lambda": lam} for d in grids.ties_densities for lam in grids.ties_lambdas],
    )
    finish("ties", "ties", ties)

    scores = scorer.scores_of(union, split="validation")
    results.append(
        Baseline(
            "fine-tune-all",
            "fine-tune",
            {"steps": "3 × expert steps"},
            scores,
            scorer.scores_of(union, split="select"),
            [{"params": {}, "validation": scores, "average": average(scores)}],
            union,
        )
    )
    if progress:
        progress("fine-tune-all")
    return results


def count_settings(grids: Grids, n_experts: int) -> int:
    """An upper bound on the number of validation evaluations :func:`tune_baselines` makes."""
    per = 1 + grids.per_expert_passes * n_experts * len(grids.per_expert)
    return 1 + len(grids.lambdas) + per + len(grids.ties_densities) * len(grids.ties_lambdas) + 1
