"""The demo's experiment: the paper's comparison in miniature, end to end, in one folder.

For each seed: build (or load from the cache) the base, the three experts and the fine-tuned-on-all
reference; tune the merging baselines (grid on validation, the best settings again on select); run
CycleQD with each preset (each run recommends one model by the same select rule); optionally run the
ablations; score everything on the test split; write ``results.json`` and the report. The seed's
final model is the presets' recommendation that is best on select: nothing is chosen on test.

The folder ``OUT`` given to the demo is seed 0's CycleQD run folder of the first preset (so
``cycleqd status OUT``, ``cycleqd resume OUT`` and ``cycleqd report OUT`` work on it), with the demo's
own files beside the run's: ``results.json``, ``report.md``, ``plots/`` and ``demo/`` (data,
baselines, the other presets' and seeds' runs, ablations, a summary with the settings and timings).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cycleqd.atomic import atomic_write_text
from cycleqd.config import config_from_dict
from cycleqd.demo.analysis import plane_coordinates
from cycleqd.demo.baselines import Baseline, count_settings, tune_baselines
from cycleqd.demo.data import task_specs, write_task_data
from cycleqd.demo.recipe import THREADS, Recipe, RecipeModels, build_or_load
from cycleqd.demo.scoring import Scorer, average
from cycleqd.demo.settings import ABLATIONS, EVALUATION, DemoSettings
from cycleqd.demo.skills import SKILLS, SkillSplits
from cycleqd.engine.choice import Candidate, choose
from cycleqd.engine.loop import Engine
from cycleqd.engine.model_registry import AGGREGATE_ID, ModelKind, ModelRecord
from cycleqd.engine.reporting import NullReporter, Reporter
from cycleqd.engine.state import RunState
from cycleqd.errors import CycleQDError
from cycleqd.weights import open_model

KINDS = ("base", "expert", "baseline", "reference", "cycleqd", "ablation")
"""Row kinds: ``reference`` is fine-tuning on all the data, which needs what merging does without."""


@dataclass(frozen=True)
class DemoPaths:
    """The files of a demo folder.

    Attributes:
        root: The folder (seed 0's CycleQD run folder).
    """

    root: Path

    @property
    def demo(self) -> Path:
        """The demo's own files."""
        return self.root / "demo"

    @property
    def data(self) -> Path:
        """Task data (JSONL)."""
        return self.demo / "data"

    @property
    def results(self) -> Path:
        """Every model's scores (JSON list of rows)."""
        return self.root / "results.json"

    @property
    def summary(self) -> Path:
        """Settings, timings, claim checks."""
        return self.demo / "summary.json"

    def seed(self, seed: int) -> Path:
        """Per-seed folder (baselines, ablations, CycleQD run of seeds other than 0)."""
        return self.demo / f"seed{seed}"

    def cycleqd(self, seed: int, preset: str, *, first: bool) -> Path:
        """The CycleQD run folder of a seed and preset (``first``: the demo's first preset)."""
        if first and seed == 0:
            return self.root
        return self.seed(seed) / "cycleqd" / preset

    def ablation(self, seed: int, name: str) -> Path:
        """The run folder of an ablation."""
        return self.seed(seed) / "ablations" / name


@dataclass
class Row:
    """One model's scores in ``results.json``.

    Attributes:
        name: Model name (``base``, ``expert-code``, ``task-arithmetic``, ``cycleqd-paper`` ...).
        kind: One of :data:`KINDS`.
        seed: The seed of the run it belongs to.
        test: Task → test score.
        validation: Task → validation score.
        select: Task → select score (empty where no choice used it).
        model: Where its weights are (folder, or model id of a run).
        params: Hyper-parameters (baselines), or what the model is (CycleQD).
        chosen: A run's recommended model (by the select rule among its candidates).
        final: The seed's recommended CycleQD model: the presets' recommendation best on select.
    """

    name: str
    kind: str
    seed: int
    test: dict[str, float]
    validation: dict[str, float]
    select: dict[str, float] = field(default_factory=dict)
    model: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    chosen: bool = False
    final: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with the averages."""
        return {
            "name": self.name,
            "kind": self.kind,
            "seed": self.seed,
            "test": self.test,
            "average": average(self.test),
            "validation": self.validation,
            "validation_average": average(self.validation),
            "select": self.select,
            "select_average": average(self.select) if self.select else None,
            "model": self.model,
            "params": self.params,
            "chosen": self.chosen,
            "final": self.final,
        }


@dataclass
class DemoOutcome:
    """What a demo produced.

    Attributes:
        paths: Its folder.
        rows: Every row of ``results.json``.
        summary: The summary (settings, timings, checks).
    """

    paths: DemoPaths
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def check_out_folder(out: Path) -> None:
    """Refuse a folder that already holds something (before any long work).

    Raises:
        CycleQDError: Naming the folder and what to do.
    """
    if out.exists() and (not out.is_dir() or any(p.name != ".lock" for p in out.iterdir())):
        raise CycleQDError(
            f"{out} is not an empty folder; give a new --out (a demo never overwrites a folder)"
        )


def run_demo(
    settings: DemoSettings,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    cache_root: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> DemoOutcome:
    """Run the whole demo in ``out``.

    Args:
        settings: What to run.
        out: The demo folder (new or empty).
        reporter: Progress bars (training, baselines, evolution, evaluation).
        cache_root: Model cache (default: :func:`~cycleqd.demo.recipe.cache_root`).
        say: Called with one line per milestone.

    Returns:
        The outcome.

    Raises:
        CycleQDError: When ``out`` is not empty or a step fails.
    """
    start = time.perf_counter()
    reporter = reporter or NullReporter()
    tell = say or reporter.log
    paths = DemoPaths(Path(out).resolve())
    check_out_folder(paths.root)
    torch.set_num_threads(THREADS)
    splits = settings.recipe.splits()
    timings: dict[str, Any] = {"seeds": {}}
    rows: list[Row] = []
    seeds_info: list[dict[str, Any]] = []
    scorer: Scorer | None = None
    try:
        for seed in range(settings.seeds):
            t0 = time.perf_counter()
            recipe = settings.recipe.with_seed(seed)
            models = _models(recipe, splits, reporter, cache_root)
            t_models = time.perf_counter() - t0
            tell(
                f"seed {seed}: models {'trained' if models.trained else 'loaded from the cache'} "
                f"({models.folder}, {t_models:.0f} s)"
            )
            engines = {
                preset: Engine.create(
                    config_from_dict(
                        _run_config(settings, models, paths, splits, seed=seed, preset=preset),
                        root=paths.demo,
                    ),
                    paths.cycleqd(seed, preset, first=preset == settings.presets[0]),
                    reporter=reporter,
                )
                for preset in settings.presets
            }
            if seed == 0:
                _write_data(paths, splits)
                _write_summary(paths, settings, timings, seeds_info, done=False)
            # The scorer shares the first run's result cache: that engine then finds the base and the
            # experts scored already (same tasks, same backend settings, same cache keys).
            scorer = Scorer(
                task_specs_for(paths, splits),
                EVALUATION,
                base_dir=models.base,
                cache_file=engines[settings.presets[0]].paths.eval_cache,
                root=paths.demo,
            )
            reporter.phase("checking task data and reference answers")
            scorer.prepare()
            seed_rows, info = _one_seed(
                settings, recipe, models, engines, scorer, paths, seed, reporter, tell
            )
            scorer.close()
            scorer = None
            rows += seed_rows
            info["models_trained"] = models.trained
            info["models_folder"] = str(models.folder)
            seeds_info.append(info)
            timings["seeds"][seed] = {"models": t_models, **info.pop("seconds")}
            _write_results(paths, rows)
        _write_results(paths, rows)
    finally:
        if scorer is not None:
            scorer.close()
    timings["total"] = time.perf_counter() - start
    summary = _write_summary(paths, settings, timings, seeds_info, done=True, rows=rows)
    from cycleqd.demo.report import write_demo_report

    write_demo_report(paths.root)
    timings["total"] = time.perf_counter() - start
    summary = _write_summary(paths, settings, timings, seeds_info, done=True, rows=rows)
    return DemoOutcome(paths=paths, rows=[r.to_dict() for r in rows], summary=summary)


def _models(
    recipe: Recipe, splits: Mapping[str, SkillSplits], reporter: Reporter, cache_root: Path | None
) -> RecipeModels:
    def progress(name: str, step: int, steps: int, loss: float | None) -> None:
        if step == 0:
            reporter.phase(f"training {name} (seed {recipe.seed})", total=steps)
        else:
            reporter.advance({"loss": loss})

    return build_or_load(recipe, root=cache_root, progress=progress, splits=splits)


def _write_data(paths: DemoPaths, splits: Mapping[str, SkillSplits]) -> None:
    write_task_data(splits, paths.data)


def task_specs_for(paths: DemoPaths, splits: Mapping[str, SkillSplits]) -> list[dict[str, Any]]:
    """The ``tasks:`` entries of the demo's runs, on the data files of its folder."""
    return task_specs({s: paths.data / f"{s}.jsonl" for s in SKILLS}, splits)


def _run_config(
    settings: DemoSettings,
    models: RecipeModels,
    paths: DemoPaths,
    splits: Mapping[str, SkillSplits],
    *,
    seed: int,
    preset: str,
    changes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": seed,
        "models": {
            "base": str(models.base),
            "experts": {s: str(models.experts[s]) for s in SKILLS},
            "dtype": "float32",
        },
        "tasks": task_specs_for(paths, splits),
        "evaluation": EVALUATION,
        **settings.run_sections(preset),
    }
    for key, value in (changes or {}).items():
        cfg[key] = (
            {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
        )
    return cfg


def _one_seed(
    settings: DemoSettings,
    recipe: Recipe,
    models: RecipeModels,
    engines: Mapping[str, Engine],
    scorer: Scorer,
    paths: DemoPaths,
    seed: int,
    reporter: Reporter,
    tell: Callable[[str], None],
) -> tuple[list[Row], dict[str, Any]]:
    seconds: dict[str, float] = {}
    rows: list[Row] = []
    t0 = time.perf_counter()
    reporter.phase(f"scoring base and experts (seed {seed})", total=3 * (1 + len(SKILLS)))
    named = {"base": models.base, **{f"expert-{s}": models.experts[s] for s in SKILLS}}
    for name, folder in named.items():
        scores = {}
        for split in ("validation", "select", "test"):
            scores[split] = scorer.scores_of(folder, split=split)
            reporter.advance()
        kind = "base" if name == "base" else "expert"
        rows.append(
            Row(name, kind, seed, scores["test"], scores["validation"], scores["select"], str(folder))
        )
    seconds["base_and_experts"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reporter.phase(
        f"tuning baselines: validation grids, the best again on select (seed {seed})",
        total=count_settings(settings.grids, len(SKILLS)),
    )
    baselines = tune_baselines(
        scorer,
        base=models.base,
        experts=models.experts,
        union=models.union,
        out=paths.seed(seed) / "baselines",
        grids=settings.grids,
        top_k=settings.top_k,
        progress=lambda _name: reporter.advance(),
    )
    reporter.phase(f"scoring baselines on test (seed {seed})", total=len(baselines))
    for b in baselines:
        assert b.folder is not None
        rows.append(_baseline_row(b, seed, scorer.scores_of(b.folder, split="test")))
        reporter.advance()
    seconds["baselines"] = time.perf_counter() - t0
    tell(f"seed {seed}: baselines tuned ({seconds['baselines']:.0f} s)")

    evaluations: dict[str, int] = {}
    for preset, engine in engines.items():
        t0 = time.perf_counter()
        state = engine.run()
        seconds[f"cycleqd-{preset}"] = time.perf_counter() - t0
        evaluations[preset] = child_evaluations(state)
        rows += cycleqd_rows(
            state, seed=seed, kind="cycleqd", name=f"cycleqd-{preset}", run_dir=engine.paths.root
        )
        tell(
            f"seed {seed}: CycleQD {preset}, {state.generations} generations "
            f"({seconds[f'cycleqd-{preset}']:.0f} s)"
        )
    _mark_final(rows)

    if settings.ablations:
        t0 = time.perf_counter()
        for name, change in ABLATIONS.items():
            cfg = _run_config(
                settings, models, paths, recipe.splits(), seed=seed, preset="paper", changes=change
            )
            folder = paths.ablation(seed, name)
            state_a = Engine.create(config_from_dict(cfg, root=paths.demo), folder, reporter=reporter).run()
            chosen = next(
                r
                for r in cycleqd_rows(state_a, seed=seed, kind="ablation", name=name, run_dir=folder)
                if r.chosen
            )
            chosen.params = {**chosen.params, "change": change}
            rows.append(chosen)
            tell(f"seed {seed}: ablation {name} done")
        seconds["ablations"] = time.perf_counter() - t0
    _place_on_plane(rows, models)
    info = {"seed": seed, "recipe_key": recipe.key, "seconds": seconds, "child_evaluations": evaluations}
    return rows, info


def _place_on_plane(rows: list[Row], models: RecipeModels) -> None:
    """Record each merged model's coordinates on the experts' task vectors (``params.plane``)."""
    base = open_model(models.base)
    experts = [open_model(models.experts[s]) for s in SKILLS]
    for row in rows:
        if row.kind in ("baseline", "cycleqd", "ablation") and row.model and Path(row.model).exists():
            coords = plane_coordinates(base, experts, open_model(row.model))
            row.params["plane"] = {
                "coefficients": dict(zip(SKILLS, coords.coefficients, strict=True)),
                "sum": coords.total,
                "off_plane": coords.off_plane,
            }


def _baseline_row(b: Baseline, seed: int, test: dict[str, float]) -> Row:
    params = {"method": b.method, **b.params, "settings_tried": len(b.tried)}
    kind = "reference" if b.method == "fine-tune" else "baseline"
    return Row(b.name, kind, seed, test, b.validation, b.select, model=str(b.folder), params=params)


def child_evaluations(state: RunState) -> int:
    """How many models a run scored on validation beyond the experts (children and seed merges)."""
    return sum(1 for r in state.registry if r.kind.stored_in_run and "validation" in r.scores)


def origin(record: ModelRecord) -> str:
    """Where a run's model comes from, in words: an evolved child, a seed merge (which one) or a soup.

    Args:
        record: Its registry record.

    Returns:
        For instance ``child of generation 57``, ``seed merge: distill`` or ``soup``.
    """
    if record.kind is ModelKind.CHILD and record.generation is not None:
        return f"child of generation {record.generation}"
    if record.kind is ModelKind.SEED and record.crossover:
        return f"seed merge: {record.crossover.get('method', '?')}"
    return record.kind.value


def cycleqd_rows(state: RunState, *, seed: int, kind: str, name: str, run_dir: Path) -> list[Row]:
    """A finished run's recommended model (the chosen row) and its aggregate (the paper's final model).

    Args:
        state: A finished run's state.
        seed: Its seed.
        kind: ``cycleqd`` or ``ablation``.
        name: Name of the recommended row (the aggregate's is ``<name>-aggregate``).
        run_dir: The run folder.

    Returns:
        Two rows; the first, the recommendation, is chosen.

    Raises:
        CycleQDError: When the run is not finished.
    """
    if not state.finished:
        raise CycleQDError(f"the run in {run_dir} did not finish")
    final = state.final
    choice = final["recommended"]
    model_id = choice["model"]
    rec = state.registry[model_id]
    agg = state.registry[AGGREGATE_ID]
    recommended = Row(
        name,
        kind,
        seed,
        dict(final["test_scores"][model_id]),
        dict(rec.scores["validation"]),
        dict(rec.scores.get("select", {})),
        model=str(run_dir / choice["path"]),
        params={
            "what": f"the run's recommended model ({rec.kind.value} {model_id}, chosen on {choice['split']})",
            "model_id": model_id,
            "origin": origin(rec),
            "chosen_on": choice["split"],
        },
        chosen=True,
    )
    aggregate = Row(
        f"{name}-aggregate",
        kind,
        seed,
        dict(final["aggregate"]["test_scores"]),
        dict(agg.scores["validation"]),
        dict(agg.scores.get("select", {})),
        model=str(final["aggregate"]["path"]),
        params={
            "what": "softmax aggregation of the archive bests (the paper's final model)",
            "elites": final["aggregate"]["elites"],
            "weights": final["aggregate"]["weights"],
        },
    )
    return [recommended, aggregate]


def _mark_final(rows: list[Row]) -> None:
    """Flag the seed's recommended CycleQD model: the presets' recommendation best on select."""
    candidates = [r for r in rows if r.kind == "cycleqd" and r.chosen]
    if candidates:
        picked = choose(
            [Candidate(str(i), r.validation, r.select or None) for i, r in enumerate(candidates)],
            split="select" if all(r.select for r in candidates) else "validation",
        )
        candidates[int(picked.model_id)].final = True


def _write_results(paths: DemoPaths, rows: list[Row]) -> None:
    atomic_write_text(paths.results, json.dumps([r.to_dict() for r in rows], indent=1) + "\n")


def _write_summary(
    paths: DemoPaths,
    settings: DemoSettings,
    timings: Mapping[str, Any],
    seeds: list[dict[str, Any]],
    *,
    done: bool,
    rows: list[Row] | None = None,
) -> dict[str, Any]:
    from cycleqd.demo.claims import check_claims

    summary = {
        "finished": done,
        "settings": settings.describe(),
        "timings": timings,
        "seeds": seeds,
        "claims": check_claims([r.to_dict() for r in rows or []]) if done else None,
    }
    paths.demo.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.summary, json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def replace_settings(settings: DemoSettings, **changes: Any) -> DemoSettings:
    """A copy of the settings with top-level fields changed."""
    return replace(settings, **changes)
