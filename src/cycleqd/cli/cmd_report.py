"""``cycleqd report``: write report.md and plots for a run folder or a demo folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cycleqd.cli.app import app


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (of `cycleqd run` or `cycleqd demo`).")],
) -> None:
    """Write RUN_DIR/report.md with tables, archive heatmaps and curves (in RUN_DIR/plots)."""
    from cycleqd.demo.report import is_demo_folder, write_demo_report
    from cycleqd.report import write_run_report

    path = write_demo_report(run_dir) if is_demo_folder(run_dir) else write_run_report(run_dir)
    Console().print(f"report: {path}", highlight=False)
