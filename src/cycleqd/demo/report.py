"""The demo's report: the results and ablation tables, the claim checks, then seed 0's run report.

``cycleqd report OUT`` rewrites it from the folder's files alone (``results.json``,
``demo/summary.json`` and the run folders).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cycleqd.atomic import atomic_write_text
from cycleqd.demo.claims import check_claims
from cycleqd.engine.paths import RunPaths
from cycleqd.engine.state import RunState
from cycleqd.errors import CycleQDError
from cycleqd.report.plots import plot_bars
from cycleqd.report.run_report import draw_run, fmt, load_state, markdown_table, run_sections

PAPER = (
    "Paper (Llama-3-8B experts, 1200 generations): CycleQD 52.4 average vs fine-tuning on all data 47.0, "
    "best merging baselines 46.9-51.6, experts 37.4/45.6/32.2; ablations: fixed roles 47.6, cycling 49.4, "
    "+ gaussian mutation 48.5, + SVD mutation 51.7, + elite sampling 52.4."
)


def is_demo_folder(path: str | Path) -> bool:
    """Whether a folder was made by ``cycleqd demo`` (it has ``results.json`` and a demo summary)."""
    root = Path(path)
    return (root / "results.json").is_file() and (root / "demo" / "summary.json").is_file()


def _pm(stats: Mapping[str, float] | None) -> str:
    if not stats:
        return "-"
    if stats["n"] == 1:
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _results_table(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> str:
    body = []
    for r in rows:
        mark = " **(final)**" if r.get("final") else (" (recommended)" if r.get("chosen") else "")
        body.append(
            [
                f"{r['name']}{mark}",
                r["kind"],
                *(fmt(r["test"].get(t)) for t in tasks),
                f"**{fmt(r['average'])}**",
                fmt(r.get("validation_average")),
                fmt(r.get("select_average")),
            ]
        )
    return markdown_table(
        ["model", "kind", *tasks, "test average", "validation average", "select average"], body
    )


def _claims_text(claims: Mapping[str, Any]) -> str:
    lines = []
    verdict = "holds" if claims["holds"] else "does NOT hold"
    lines.append(f"**The claim {verdict}** on {len(claims['per_seed'])} seed(s).\n")
    rows = []
    for c in claims["per_seed"]:
        kept = ", ".join(
            f"{t} {'✓' if s['kept_half'] else '✗'} ({s['kept_gain']:+.2f} of {s['expert_gain']:+.2f})"
            for t, s in c["skills"].items()
        )
        rows.append(
            [
                c["seed"],
                c["final"],
                fmt(c["final_average"]),
                f"{c['strongest_other']} {fmt(c['strongest_other_average'])}",
                f"{c['margin']:+.3f}",
                "✓" if c["beats_experts_and_baselines"] else "✗",
                kept,
            ]
        )
    lines.append(
        markdown_table(
            [
                "seed",
                "final model",
                "test avg",
                "strongest expert/baseline",
                "margin",
                "beats all",
                "per skill: kept ≥ ½ of the expert's gain (kept of gain)",
            ],
            rows,
        )
    )
    for c in claims["per_seed"]:
        if c["holds"]:
            continue
        why = []
        if c["beaten_by"]:
            why.append("matched or beaten on the test average by " + ", ".join(c["beaten_by"]))
        short = [t for t, s in c["skills"].items() if not s["kept_half"]]
        if short:
            why.append("kept less than half of the expert's gain on " + ", ".join(short))
        lines.append(f"- seed {c['seed']}: {'; '.join(why)}.")
    return "\n".join(lines) + "\n"


def _aggregation_notes(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the softmax aggregation merged, per seed (the archive bests and their weights)."""
    lines = []
    for r in rows:
        if r["kind"] != "cycleqd" or not r["name"].endswith("aggregate"):
            continue
        elites = r["params"].get("elites", {})
        weights = r["params"].get("weights", {})
        experts = sum(1 for t, m in elites.items() if m == f"expert-{t}")
        parts = ", ".join(f"{t}: {m} ({weights.get(t, 0):.2f})" for t, m in elites.items())
        lines.append(
            f"- seed {r['seed']}: {parts}; {experts} of {len(elites)} archive bests are still the experts."
        )
    return "\n".join(lines) + "\n" if lines else ""


def write_demo_report(root: str | Path) -> Path:
    """Write ``report.md`` and ``plots/`` of a demo folder.

    Args:
        root: The demo folder.

    Returns:
        The report file.

    Raises:
        CycleQDError: When the folder is not a demo folder.
    """
    root = Path(root).resolve()
    if not is_demo_folder(root):
        raise CycleQDError(f"{root} is not a demo folder (no results.json and demo/summary.json)")
    rows: list[dict[str, Any]] = json.loads((root / "results.json").read_text())
    summary: dict[str, Any] = json.loads((root / "demo" / "summary.json").read_text())
    claims = check_claims(rows)
    settings = summary.get("settings", {})
    tasks = list(rows[0]["test"]) if rows else []
    seeds = sorted({r["seed"] for r in rows})
    plots = RunPaths(root).plots
    out: list[str] = ["# CycleQD demo: the paper's experiment in miniature\n"]
    recipe = settings.get("recipe", {})
    presets = settings.get("presets", {})
    out.append(
        f"Three skills whose answers are executed for real (code in Python, db in SQLite, os in bash, all in "
        f"the sandbox); a {recipe.get('shape', {}).get('hidden_size', '?')}-wide, "
        f"{recipe.get('shape', {}).get('layers', '?')}-layer Llama; {len(seeds)} seed(s); CycleQD with the "
        f"presets {', '.join(f'`{p}`' for p in presets)}, {settings.get('generations', '?')} generations "
        f"each. Validation {recipe.get('validation')}, select {recipe.get('select')} and test "
        f"{recipe.get('test')} items per skill. Every method is chosen by one rule: its settings (the "
        f"baselines' grids, CycleQD's elites) are scored on validation, the {settings.get('top_k', '?')} "
        "best again on select (with CycleQD's aggregate), and the best on select is its row; the seed's "
        "final model is the presets' recommendation best on select. Nothing is chosen on test.\n"
    )
    for name, sections in presets.items():
        out.append(f"- `{name}`: {_preset_text(sections)}")
    out.append("")
    if settings.get("quick"):
        out.append("*Quick variant: tiny models and splits; the numbers mean nothing.*\n")
    out.append("## The claim\n")
    out.append(
        "The final CycleQD model beats every expert and every merging baseline on the test average, and "
        "keeps at least half of each expert's gain over the base on that expert's skill. Fine-tuning on "
        "all the data (`reference`) is shown beside it: it needs every expert's training data, which "
        "merging does without, and in miniature it has no conflict to resolve between three small skills "
        "that a tiny model can learn at once.\n"
    )
    out.append(_claims_text(claims))
    averages = claims["averages"]
    order = [n for n in dict.fromkeys(r["name"] for r in rows)] + ["cycleqd (final)"]
    table = [
        [
            name,
            averages[name]["kind"],
            _pm(averages[name]),
            fmt(averages[name]["min"]),
            fmt(averages[name]["max"]),
        ]
        for name in dict.fromkeys(order)
        if name in averages
    ]
    out.append("\n## Test averages over seeds (mean ± standard deviation)\n")
    out.append(markdown_table(["model", "kind", "test average", "min", "max"], table))
    bars = [{"name": n, "average": averages[n]["mean"]} for n in dict.fromkeys(order) if n in averages]
    errors = {n: averages[n]["std"] for n in averages}
    bar_path = plot_bars(bars, plots / "test_averages.png", title="test average over seeds", errors=errors)
    out.append(f"![test averages]({bar_path.relative_to(root)})\n")
    for seed in seeds:
        out.append(f"\n## Results of seed {seed} (test split)\n")
        out.append(_results_table([r for r in rows if r["seed"] == seed], tasks))
        tuned = [r for r in rows if r["seed"] == seed and r["kind"] == "baseline"]
        if tuned:
            out.append(
                "Baselines as chosen (validation grid, best again on select): "
                + "; ".join(f"{r['name']} {_params_text(r['params'])}" for r in tuned)
                + ".\n"
            )
    ablations = [r for r in rows if r["kind"] == "ablation"]
    if ablations:
        out.append("\n## Ablations of the `paper` preset (same budget, seeds and choice rule)\n")
        names = ["cycleqd-paper", *dict.fromkeys(r["name"] for r in ablations)]
        out.append(
            markdown_table(
                ["variant", "test average (mean ± sd)", *(f"seed {s}" for s in seeds)],
                [
                    [
                        n,
                        _pm(averages.get(n)),
                        *(
                            fmt(
                                next(
                                    (r["average"] for r in rows if r["seed"] == s and r["name"] == n),
                                    None,
                                )
                            )
                            for s in seeds
                        ),
                    ]
                    for n in names
                ],
            )
        )
    out.append("\n## Which causes of a weak final model still hold\n")
    out.append(_causes_text(rows, settings))
    agg = _aggregation_notes(rows)
    if agg:
        out.append("\n## What the final aggregation merged\n")
        out.append(agg)
    timings = summary.get("timings", {})
    if timings:
        out.append("\n## Time\n")
        lines = [f"- total: {timings.get('total', 0):.0f} s"]
        for seed, t in (timings.get("seeds") or {}).items():
            lines.append(f"- seed {seed}: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()))
        out.append("\n".join(lines) + "\n")
    out.append(f"\n{PAPER}\n")
    paths, state = load_state(root)
    figures = draw_run(paths, state, plots)
    out.append(run_sections(paths, state, figures, relative_to=root, title="CycleQD run of seed 0"))
    report = root / "report.md"
    atomic_write_text(report, "\n".join(out))
    return report


def standard_error(scores: Mapping[str, float], n_items: int) -> float:
    """Binomial standard error of a task average: √(Σ_t p_t (1 − p_t) / n) / T for n items per task."""
    if not scores or n_items < 1:
        return float("nan")
    return (sum(p * (1 - p) for p in scores.values()) / n_items) ** 0.5 / len(scores)


def _causes_text(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> str:
    """Numbers for the causes of a weak final model: noise in the choice, the merge plane, budget."""
    recipe = settings.get("recipe", {})
    lines = ["1. **The choice is noisy.** A run's recommendation is its best candidate on select, not on "
             "validation, which drove evolution and so flatters its winners. Validation → select → test "
             "averages of each recommendation and of the run's best elite by validation, with the "
             "binomial standard error of a 3-skill average on select:\n"]  # fmt: skip
    table = []
    for r in rows:
        if r["kind"] not in ("cycleqd", "ablation") or not r.get("chosen"):
            continue
        run_dir = Path(r["model"]).parent
        best = _best_validation_elite(run_dir)
        se = standard_error(r["select"], int(recipe.get("select") or 0)) if r.get("select") else None
        table.append(
            [
                r["seed"],
                r["name"],
                r["params"].get("model_id", "-"),
                r["params"].get("origin", "-"),
                f"{fmt(r['validation_average'])} → {fmt(r.get('select_average'))} → {fmt(r['average'])}",
                f"{best[0]}: {fmt(best[1])} → {fmt(best[2])}" if best else "-",
                fmt(se),
            ]
        )
    lines.append(
        markdown_table(
            [
                "seed",
                "run",
                "recommended",
                "origin",
                "val → select → test",
                "best by validation: val → test",
                "SE",
            ],
            table,
        )
    )
    lines.append(
        "\n2. **Children stay on the experts' plane.** Least-squares coordinates of each merged model's "
        "task vector on the experts' task vectors: Σ a_k is 1 on the paper's crossover plane (average "
        "merge: 1, task arithmetic with λ: 3λ), and the off-plane share is ‖r‖ / ‖τ‖ of what is left:\n"
    )
    plane = []
    for r in rows:
        coords = r.get("params", {}).get("plane")
        if coords and r["seed"] == min(x["seed"] for x in rows):
            plane.append(
                [
                    r["name"],
                    ", ".join(f"{t} {a:.2f}" for t, a in coords["coefficients"].items()),
                    f"{coords['sum']:.2f}",
                    f"{coords['off_plane']:.1%}",
                    fmt(r["average"]),
                ]
            )
    lines.append(markdown_table(["model (first seed)", "a_k", "Σ a_k", "off plane", "test average"], plane))
    lines.append(
        f"\n3. **The budget.** {settings.get('generations', '?')} generations per run (paper: 1200). "
        "Archive cells filled and whether each archive's best is still its expert, first seed:\n"
    )
    budget = []
    for r in rows:
        if r["kind"] != "cycleqd" or not r.get("chosen") or r["seed"] != min(x["seed"] for x in rows):
            continue
        state = RunState.load(RunPaths(Path(r["model"]).parent).checkpoint)
        cells = ", ".join(f"{t} {len(state.archives[t])}/{state.archives[t].n_cells}" for t in state.tasks)
        bests = ", ".join(
            f"{t}: {'expert' if state.archives[t].best().model_id.startswith('expert-') else 'evolved'}"
            for t in state.tasks
        )
        budget.append([r["name"], cells, bests])
    lines.append(markdown_table(["run", "cells filled", "archive bests"], budget))
    return "\n".join(lines) + "\n"


def _best_validation_elite(run_dir: Path) -> tuple[str, float, float] | None:
    """The elite with the best validation average of a run: (id, validation, test average)."""
    paths = RunPaths(run_dir)
    if not paths.checkpoint.exists():
        return None
    state = RunState.load(paths.checkpoint)
    model_id = state.final.get("best_average")
    test = state.final.get("test_scores", {}).get(model_id)
    if model_id is None or test is None:
        return None
    val = state.registry[model_id].scores["validation"]
    return model_id, sum(val.values()) / len(val), sum(test.values()) / len(test)


def _preset_text(sections: Mapping[str, Any]) -> str:
    if not sections:
        return "the paper's settings (the config defaults)."
    parts = []
    for section, value in sections.items():
        if section == "init":
            merges = value.get("merges", [])
            parts.append(
                "archives seeded with "
                + ", ".join(
                    m["method"] + "".join(f" {k}={v}" for k, v in m.get("params", {}).items()) for m in merges
                )
            )
        elif isinstance(value, Mapping):
            parts.append(f"{section}: " + ", ".join(f"{k}={_short(v)}" for k, v in value.items()))
        else:
            parts.append(f"{section}={_short(value)}")
    return "; ".join(parts) + "."


def _params_text(params: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if k not in ("method", "settings_tried", "plane")}
    inner = ", ".join(f"{k}={_short(v)}" for k, v in shown.items())
    return f"({inner}; {params.get('settings_tried', 1)} settings tried)"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)
