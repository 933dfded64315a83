"""``cycleqd demo``: the paper's experiment in miniature, on a CPU, in minutes."""

from __future__ import annotations

import os

# Idle OpenMP threads must sleep rather than spin: with spinning, torch on two threads slows down
# tenfold as soon as anything else runs on the machine (sandboxed checks, other programs). This has
# to be set before torch is loaded, which happens when the other command modules are imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cycleqd.cli.app import app


def default_out(parent: Path = Path("runs")) -> Path:
    """``runs/demo``, or ``runs/demo-<date>-<time>`` when that is taken."""
    first = parent / "demo"
    if not first.exists():
        return first
    return parent / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="New folder for the demo (default: runs/demo).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds to run (each trains its own models).", min=1)] = 1,
    ablations: Annotated[
        bool, typer.Option("--ablations", help="Also run the paper's ablations (same budget and seeds).")
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="A tiny variant that runs in seconds (for tests; numbers mean nothing)."
        ),
    ] = False,
    generations: Annotated[
        int | None, typer.Option(help="CycleQD generations (default: 120; quick: 3).", min=1)
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Evolve multi-skill models from three single-skill experts and compare with the baselines."""
    from cycleqd.cli.progress import RichReporter
    from cycleqd.demo.experiment import check_out_folder, replace_settings, run_demo
    from cycleqd.demo.settings import DemoSettings

    settings = DemoSettings.quick_settings() if quick else DemoSettings()
    changes: dict[str, object] = {"seeds": seeds, "ablations": ablations}
    if generations is not None:
        changes["generations"] = generations
    settings = replace_settings(settings, **changes)
    folder = out or default_out()
    check_out_folder(folder)
    console = Console()
    start = time.perf_counter()
    with RichReporter(enabled=progress) as reporter:
        outcome = run_demo(settings, folder, reporter=reporter)
    seconds = time.perf_counter() - start
    _print_summary(console, outcome.rows, outcome.summary, folder)
    trained = any(s.get("models_trained") for s in outcome.summary.get("seeds", []))
    how = "first run: models trained" if trained else "cached run: models loaded from the cache"
    console.print(f"total time: {seconds:.0f} s ({seconds / 60:.1f} min; {how})", highlight=False)


def _print_summary(console: Console, rows: list[dict], summary: dict, folder: Path) -> None:
    from rich.table import Table

    tasks = list(rows[0]["test"]) if rows else []
    seeds = sorted({r["seed"] for r in rows})
    table = Table(title=f"test split (seed {seeds[0]})" if len(seeds) == 1 else "test split, seed 0")
    for col in ("model", "kind", *tasks, "average"):
        table.add_column(col)
    for r in rows:
        if r["seed"] != seeds[0]:
            continue
        mark = " (final)" if r.get("final") else (" (recommended)" if r.get("chosen") else "")
        table.add_row(
            r["name"] + mark, r["kind"], *(f"{r['test'][t]:.3f}" for t in tasks), f"{r['average']:.3f}"
        )
    console.print(table)
    claims = summary.get("claims") or {}
    for c in claims.get("per_seed", []):
        kept = ", ".join(f"{t} {'ok' if s['kept_half'] else 'NO'}" for t, s in c["skills"].items())
        console.print(
            f"seed {c['seed']}: {c['final']} {c['final_average']:.3f} vs strongest other "
            f"{c['strongest_other']} {c['strongest_other_average']:.3f} "
            f"({'beats all' if c['beats_experts_and_baselines'] else 'does NOT beat all'}); "
            f"kept half of each expert's gain: {kept}",
            highlight=False,
        )
    if claims:
        console.print(
            f"claim {'holds' if claims.get('holds') else 'does NOT hold'} on every seed", highlight=False
        )
    console.print(
        f"results: {folder / 'results.json'}\nreport:  {folder / 'report.md'}\n"
        f"`cycleqd status {folder}` shows seed 0's CycleQD run of the first preset; "
        f"`cycleqd report {folder}` rewrites the report",
        highlight=False,
    )
