"""``cycleqd run``, ``cycleqd resume`` and ``cycleqd status``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cycleqd.cli.app import app
from cycleqd.cli.progress import RichReporter
from cycleqd.engine.status import run_status


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New run folder.")],
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Start a CycleQD run: evolve, aggregate, evaluate on the test split."""
    from cycleqd.config import load_config
    from cycleqd.engine.loop import Engine

    cfg = load_config(config)
    start = time.perf_counter()
    with RichReporter(enabled=progress) as reporter:
        engine = Engine.create(cfg, out, reporter=reporter)
        engine.run()
    _summary(out, time.perf_counter() - start)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="Run folder of a stopped run.")],
    generations: Annotated[
        int | None,
        typer.Option(help="New total number of generations; extends a finished run and aggregates again."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Continue a stopped run from its last checkpoint (or extend a finished one)."""
    from cycleqd.engine.loop import Engine

    start = time.perf_counter()
    with RichReporter(enabled=progress) as reporter:
        Engine.open(run_dir, generations=generations, reporter=reporter).run()
    _summary(run_dir, time.perf_counter() - start)


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a run's generation, archives and, once finished, the aggregate's test scores."""
    info = run_status(run_dir)
    if as_json:
        typer.echo(json.dumps(info, indent=1))
        return
    console = Console()
    state = "finished" if info["finished"] else "in progress"
    console.print(f"[bold]{run_dir}[/]: generation {info['generation']}/{info['generations']} ({state})")
    table = Table("archive", "filled", "cells", "coverage", "QD score", "best model", "best score")
    for task, a in info["archives"].items():
        best = a["best"] or {}
        table.add_row(
            task,
            str(a["filled"]),
            str(a["cells"]),
            f"{a['coverage']:.1%}",
            f"{a['qd_score']:.3f}",
            str(best.get("model", "-")),
            f"{best['score']:.3f}" if best else "-",
        )
    console.print(table)
    agg = info.get("aggregate")
    if agg:
        scores = ", ".join(f"{t} {s:.3f}" for t, s in agg["test_scores"].items())
        console.print(f"aggregate: {agg['path']}  test: {scores}")
    for line in _recommended_lines(info):
        console.print(line)


def _recommended_lines(info: dict[str, Any]) -> list[str]:
    rec = info.get("recommended")
    if not rec:
        return []
    scores = ", ".join(f"{t} {s:.3f}" for t, s in (rec["test_scores"] or {}).items())
    lines = [f"recommended: {rec['model']} -> {rec['path']} (chosen on {rec['split']}; test: {scores})"]
    if rec["split"] == "validation":
        lines.append(
            "  no select split: chosen on the split that drove evolution, so its validation score is "
            "optimistic; give the tasks select items"
        )
    return lines


def _summary(run_dir: Path, seconds: float) -> None:
    info = run_status(run_dir)
    console = Console()
    agg = info.get("aggregate") or {}
    if agg:
        scores = ", ".join(f"{t} {s:.3f}" for t, s in agg["test_scores"].items())
        console.print(f"aggregate model: {agg['path']} (test: {scores})")
    for line in _recommended_lines(info):
        console.print(line)
    console.print(f"run folder: {Path(run_dir).resolve()}  ({seconds:.1f} s)")
