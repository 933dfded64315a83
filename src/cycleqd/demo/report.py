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
        mark = " **(final)**" if r.get("final") else (" (chosen)" if r.get("chosen") else "")
        body.append(
            [
                f"{r['name']}{mark}",
                r["kind"],
                *(fmt(r["test"].get(t)) for t in tasks),
                f"**{fmt(r['average'])}**",
                fmt(r.get("validation_average")),
            ]
        )
    return markdown_table(["model", "kind", *tasks, "test average", "validation average"], body)


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
    cq = settings.get("cycleqd", {})
    out.append(
        f"Three skills whose answers are executed for real (code in Python, db in SQLite, os in bash, all in "
        f"the sandbox); a {recipe.get('shape', {}).get('hidden_size', '?')}-wide, "
        f"{recipe.get('shape', {}).get('layers', '?')}-layer Llama; {len(seeds)} seed(s); CycleQD with "
        f"{cq.get('generations', '?')} generations, {cq.get('bins', '?')} bins per dimension (paper's range "
        f"rule), elite sampling α {cq.get('alpha_low')}/{cq.get('alpha_high')}, crossover μ "
        f"{cq.get('crossover_mean')} σ {cq.get('crossover_std')}, {cq.get('mutation')} mutation "
        f"ρ {cq.get('rho')}. "
        f"Validation {recipe.get('validation')} and test {recipe.get('test')} items per skill; every choice "
        f"(baseline hyper-parameters, the final model) is made on validation.\n"
    )
    if settings.get("quick"):
        out.append("*Quick variant: tiny models and splits; the numbers mean nothing.*\n")
    out.append("## The claim\n")
    out.append(
        "The CycleQD model chosen on validation beats every expert and every baseline on the test average, "
        "and keeps at least half of each expert's gain over the base on that expert's skill.\n"
    )
    out.append(_claims_text(claims))
    averages = claims["averages"]
    order = [n for n in dict.fromkeys(r["name"] for r in rows)] + ["cycleqd (chosen)"]
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
                "Baselines as tuned on validation: "
                + "; ".join(f"{r['name']} {_params_text(r['params'])}" for r in tuned)
                + ".\n"
            )
    ablations = [r for r in rows if r["kind"] == "ablation"]
    if ablations:
        out.append("\n## Ablations (same budget and seeds)\n")
        names = ["cycleqd (chosen)", *dict.fromkeys(r["name"] for r in ablations)]
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
                                    (
                                        r["average"]
                                        for r in rows
                                        if r["seed"] == s
                                        and (
                                            r["name"] == n
                                            or (
                                                n == "cycleqd (chosen)"
                                                and r["kind"] == "cycleqd"
                                                and r["chosen"]
                                            )
                                        )
                                    ),
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


def _params_text(params: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if k not in ("method", "settings_tried")}
    inner = ", ".join(f"{k}={_short(v)}" for k, v in shown.items())
    return f"({inner}; {params.get('settings_tried', 1)} settings tried)"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)
