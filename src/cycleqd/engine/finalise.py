"""The end of a run: the aggregate, the recommended model chosen on select, the scores on test.

The aggregate is the paper's: θ0 + Σ_k softmax(f/T)_k τ_{e_k} over the best elite of each archive.
The recommendation is the best on the ``select`` split (or, without one, on validation, said so) among
the top-k elites by validation average, the configured soups of them and the aggregate; it is copied
to ``final/`` and every candidate's scores go to ``choice.json``. Test scores come last and are never
read by the choice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cycleqd.atomic import atomic_write_text
from cycleqd.config import RunConfig
from cycleqd.engine.aggregate import aggregate_tensors, softmax_weights
from cycleqd.engine.choice import Candidate, choose, mean_score, top_by_validation
from cycleqd.engine.model_registry import (
    AGGREGATE_ID,
    BASE_ID,
    ModelKind,
    ModelRecord,
    ModelStatus,
    expert_id,
)
from cycleqd.engine.paths import RunPaths
from cycleqd.engine.reporting import Reporter
from cycleqd.engine.run_folder import crash_point, model_path, remove_path
from cycleqd.engine.soup import SOUP_KINDS, greedy_ingredients, soup_id
from cycleqd.engine.state import RunState
from cycleqd.weights import ModelSource, fingerprint_tensors, open_model, save_model
from cycleqd.weights.dtypes import parse_dtype
from cycleqd.weights.save import copy_model

#: Scores of a model on every task of one split: (weights, fingerprint, split) → task → score.
Scorer = Callable[[Mapping[str, torch.Tensor], str, str], dict[str, float]]


@dataclass
class Finalisation:
    """Finishes a run whose generations are all made.

    Attributes:
        cfg: The run's config.
        paths: Its folder.
        base: The base model.
        score: Scores a model on one split (through the run's evaluator and its cache).
        choice_split: ``select`` when the tasks have one, else ``validation``.
        reporter: Progress sink.
    """

    cfg: RunConfig
    paths: RunPaths
    base: ModelSource
    score: Scorer
    choice_split: str
    reporter: Reporter

    def _save_soup(self, state: RunState, members: Sequence[str], path: Path) -> tuple[ModelSource, str]:
        """Save θ0 + (1/n) Σ τ of ``members`` to ``path``; return it opened and its fingerprint."""
        assert self.base is not None
        sources = [open_model(model_path(self.paths, state.registry, m), name=m) for m in members]
        save_model(
            aggregate_tensors(self.base, sources, [1.0 / len(members)] * len(members)),
            path,
            template=self.base,
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
        remove_path(self.paths.soups)
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
                score = mean_score(self.score(soup, fingerprint, "validation"))
                trials.append({"added": ids[-1], "validation": score})
                return score

            first = mean_score(state.registry[top[0]].scores["validation"])
            members["greedy"] = greedy_ingredients(top, first_score=first, score=soup_score)
            remove_path(trial)
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
            record.scores["validation"] = self.score(soup, fingerprint, "validation")  # cached for greedy
            state.registry.add(record)
            made.append(record.id)
        crash_point("after-soups", state.generation)
        return made, trace

    def run(self, state: RunState) -> None:
        """Aggregate, choose the recommended model, score on test and mark the run finished.

        Each step is redone whole when a finalisation was interrupted; the checkpoint is saved last.

        Args:
            state: The run state after the last generation.
        """
        cfg = self.cfg
        bests = {t: state.archives[t].best() for t in cfg.task_names}
        best_ids = [bests[t].model_id for t in cfg.task_names]
        best_scores = [bests[t].scores[t] for t in cfg.task_names]
        weights = softmax_weights(best_scores, temperature=cfg.aggregation.temperature)
        self.reporter.log("aggregating the best elite of each archive")
        sources = [open_model(model_path(self.paths, state.registry, m), name=m) for m in best_ids]
        save_model(
            aggregate_tensors(self.base, sources, weights),
            self.paths.aggregate,
            template=self.base,
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
        split = self.choice_split
        opened: dict[str, ModelSource] = {AGGREGATE_ID: agg}

        def source(model_id: str) -> ModelSource:
            if model_id not in opened:
                opened[model_id] = open_model(model_path(self.paths, state.registry, model_id), name=model_id)
            return opened[model_id]

        self.reporter.phase(
            f"choosing the recommended model on {split}",
            total=1 + (len(candidates) if split == "select" else 0),
        )
        agg_record.scores["validation"] = self.score(agg, agg_record.fingerprint, "validation")
        self.reporter.advance()
        if split == "select":
            for model_id in candidates:
                rec = state.registry[model_id]
                rec.scores["select"] = self.score(source(model_id), rec.fingerprint, "select")
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
        copy_model(model_path(self.paths, state.registry, chosen), self.paths.final, template=self.base)
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
            rec.scores["test"] = self.score(source(model_id), rec.fingerprint, "test")
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
