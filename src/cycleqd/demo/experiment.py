"""The demo's experiment: the paper's comparison in miniature, end to end, in one folder.

For each seed: build (or load from the cache) the base, the three experts and the fine-tuned-on-all
baseline; tune the merging baselines on the validation split; run CycleQD with the engine; optionally
run the ablations; score everything on the test split; write ``results.json`` and the report.

The folder ``OUT`` given to the demo is seed 0's CycleQD run folder (so ``cycleqd status OUT``,
``cycleqd resume OUT`` and ``cycleqd report OUT`` work on it), with the demo's own files beside the
run's: ``results.json``, ``report.md``, ``plots/`` and ``demo/`` (data, baselines, other seeds,
ablations, a summary with the settings and timings).
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
from cycleqd.demo.baselines import Baseline, count_settings, tune_baselines
from cycleqd.demo.data import task_specs, write_task_data
from cycleqd.demo.recipe import THREADS, Recipe, RecipeModels, build_or_load
from cycleqd.demo.scoring import Scorer, average
from cycleqd.demo.settings import ABLATIONS, EVALUATION, DemoSettings
from cycleqd.demo.skills import SKILLS, SkillSplits
from cycleqd.engine.loop import Engine, NullReporter, Reporter
from cycleqd.engine.state import RunState
from cycleqd.errors import CycleQDError

KINDS = ("base", "expert", "baseline", "cycleqd", "ablation")


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

    def cycleqd(self, seed: int) -> Path:
        """The CycleQD run folder of a seed."""
        return self.root if seed == 0 else self.seed(seed) / "cycleqd"

    def ablation(self, seed: int, name: str) -> Path:
        """The run folder of an ablation."""
        return self.seed(seed) / "ablations" / name


@dataclass
class Row:
    """One model's scores in ``results.json``.

    Attributes:
        name: Model name (``base``, ``expert-code``, ``task-arithmetic``, ``cycleqd-aggregate`` ...).
        kind: One of :data:`KINDS`.
        seed: The seed of the run it belongs to.
        test: Task → test score.
        validation: Task → validation score.
        model: Where its weights are (folder, or model id of a run).
        params: Hyper-parameters (baselines), or what the model is (CycleQD).
        chosen: The model this seed recommends (chosen on validation among its CycleQD rows).
        final: The model the demo recommends (one row in all).
    """

    name: str
    kind: str
    seed: int
    test: dict[str, float]
    validation: dict[str, float]
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
            cfg = _run_config(settings, models, paths, splits, seed=seed)
            engine = Engine.create(
                config_from_dict(cfg, root=paths.demo), paths.cycleqd(seed), reporter=reporter
            )
            if seed == 0:
                _write_data(paths, splits)
                _write_summary(paths, settings, timings, seeds_info, done=False)
            # The scorer shares the run's result cache: the engine then finds the base and the experts
            # scored already (same tasks, same backend settings, same cache keys).
            scorer = Scorer(
                cfg["tasks"],
                EVALUATION,
                base_dir=models.base,
                cache_file=engine.paths.eval_cache,
                root=paths.demo,
            )
            reporter.phase("checking task data and reference answers")
            scorer.prepare()
            seed_rows, info = _one_seed(settings, recipe, models, engine, scorer, paths, seed, reporter, tell)
            scorer.close()
            scorer = None
            rows += seed_rows
            info["models_trained"] = models.trained
            info["models_folder"] = str(models.folder)
            seeds_info.append(info)
            timings["seeds"][seed] = {"models": t_models, **info.pop("seconds")}
            _write_results(paths, rows)
        _mark_final(rows)
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


def _run_config(
    settings: DemoSettings,
    models: RecipeModels,
    paths: DemoPaths,
    splits: Mapping[str, SkillSplits],
    *,
    seed: int,
    changes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    files = {s: paths.data / f"{s}.jsonl" for s in SKILLS}
    cfg: dict[str, Any] = {
        "seed": seed,
        "models": {
            "base": str(models.base),
            "experts": {s: str(models.experts[s]) for s in SKILLS},
            "dtype": "float32",
        },
        "tasks": task_specs(files, splits),
        "evaluation": EVALUATION,
        **settings.cycleqd.sections(),
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
    engine: Engine,
    scorer: Scorer,
    paths: DemoPaths,
    seed: int,
    reporter: Reporter,
    tell: Callable[[str], None],
) -> tuple[list[Row], dict[str, Any]]:
    seconds: dict[str, float] = {}
    rows: list[Row] = []
    t0 = time.perf_counter()
    reporter.phase(f"scoring base and experts (seed {seed})", total=2 * (1 + len(SKILLS)))
    named = {"base": models.base, **{f"expert-{s}": models.experts[s] for s in SKILLS}}
    for name, folder in named.items():
        val = scorer.scores_of(folder, split="validation")
        reporter.advance()
        test = scorer.scores_of(folder, split="test")
        reporter.advance()
        kind = "base" if name == "base" else "expert"
        rows.append(Row(name, kind, seed, test, val, model=str(folder)))
    seconds["base_and_experts"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reporter.phase(
        f"tuning baselines on validation (seed {seed})", total=count_settings(settings.grids, len(SKILLS))
    )
    baselines = tune_baselines(
        scorer,
        base=models.base,
        experts=models.experts,
        union=models.union,
        out=paths.seed(seed) / "baselines",
        grids=settings.grids,
        progress=lambda _name: reporter.advance(),
    )
    reporter.phase(f"scoring baselines on test (seed {seed})", total=len(baselines))
    for b in baselines:
        assert b.folder is not None
        rows.append(_baseline_row(b, seed, scorer.scores_of(b.folder, split="test")))
        reporter.advance()
    seconds["baselines"] = time.perf_counter() - t0
    tell(f"seed {seed}: baselines tuned on validation ({seconds['baselines']:.0f} s)")

    t0 = time.perf_counter()
    state = engine.run()
    seconds["cycleqd"] = time.perf_counter() - t0
    cq_rows = cycleqd_rows(state, seed=seed, kind="cycleqd", prefix="cycleqd", run_dir=paths.cycleqd(seed))
    rows += cq_rows
    tell(f"seed {seed}: CycleQD, {state.generations} generations ({seconds['cycleqd']:.0f} s)")

    if settings.ablations:
        t0 = time.perf_counter()
        for name, change in ABLATIONS.items():
            cfg = _run_config(settings, models, paths, recipe.splits(), seed=seed, changes=change)
            folder = paths.ablation(seed, name)
            state_a = Engine.create(config_from_dict(cfg, root=paths.demo), folder, reporter=reporter).run()
            chosen = next(
                r
                for r in cycleqd_rows(state_a, seed=seed, kind="ablation", prefix=name, run_dir=folder)
                if r.chosen
            )
            chosen.name = name
            chosen.params = {**chosen.params, "change": change}
            rows.append(chosen)
            tell(f"seed {seed}: ablation {name} done")
        seconds["ablations"] = time.perf_counter() - t0
    info = {"seed": seed, "recipe_key": recipe.key, "seconds": seconds}
    return rows, info


def _baseline_row(b: Baseline, seed: int, test: dict[str, float]) -> Row:
    params = {"method": b.method, **b.params, "settings_tried": len(b.tried)}
    return Row(b.name, "baseline", seed, test, b.validation, model=str(b.folder), params=params)


def cycleqd_rows(state: RunState, *, seed: int, kind: str, prefix: str, run_dir: Path) -> list[Row]:
    """The final models of a finished run as rows: the aggregate and the best-average archive member.

    The chosen one is the one with the higher validation average (the aggregate on a tie, being the
    paper's final model).

    Args:
        state: A finished run's state.
        seed: Its seed.
        kind: ``cycleqd`` or ``ablation``.
        prefix: Name prefix of the rows.
        run_dir: The run folder.

    Returns:
        Two rows, exactly one of them chosen.

    Raises:
        CycleQDError: When the run is not finished.
    """
    if not state.finished:
        raise CycleQDError(f"the run in {run_dir} did not finish")
    final = state.final
    agg = final["aggregate"]
    best_id = final["best_average"]
    best = state.registry[best_id]
    rows = [
        Row(
            f"{prefix}-aggregate",
            kind,
            seed,
            dict(agg["test_scores"]),
            dict(agg["validation_scores"]),
            model=str(agg["path"]),
            params={
                "what": "softmax aggregation of the archive bests",
                "elites": agg["elites"],
                "weights": agg["weights"],
            },
        ),
        Row(
            f"{prefix}-best-average",
            kind,
            seed,
            dict(final["test_scores"][best_id]),
            dict(best.scores["validation"]),
            model=str(run_dir / best.path) if best.path else best_id,
            params={"what": "archive member with the best validation average", "model_id": best_id},
        ),
    ]
    pick = 0 if average(rows[0].validation) >= average(rows[1].validation) else 1
    rows[pick].chosen = True
    return rows


def _mark_final(rows: list[Row]) -> None:
    """Flag the recommended model: the chosen CycleQD row with the best validation average."""
    chosen = [r for r in rows if r.kind == "cycleqd" and r.chosen]
    if chosen:
        best = max(chosen, key=lambda r: (average(r.validation), -r.seed))
        best.final = True


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
    """A copy of the settings with top-level fields changed (``generations`` goes to CycleQD's)."""
    if "generations" in changes:
        changes["cycleqd"] = replace(settings.cycleqd, generations=changes.pop("generations"))
    return replace(settings, **changes)
