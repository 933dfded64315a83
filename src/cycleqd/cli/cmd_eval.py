"""``cycleqd eval``: score a model, or saved outputs, on a config's tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cycleqd.cli.app import app
from cycleqd.errors import ConfigError


@app.command("eval")
def eval_command(
    model: Optional[Path] = typer.Argument(  # noqa: UP045 - typer reads the annotation at run time
        None, help="Model folder to score (Hugging Face layout). Leave out with --predictions."
    ),
    config: Path = typer.Option(
        ..., "--config", "-c", help="Run config; its tasks: and evaluation: sections are used."
    ),
    split: str = typer.Option("test", "--split", help="Split to score: validation, select or test."),
    predictions: Optional[Path] = typer.Option(  # noqa: UP045
        None,
        "--predictions",
        help="Score saved outputs (JSONL lines with task, id, output) instead of a model.",
    ),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task names (default: all)."),  # noqa: UP045
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON on stdout."),
    output: Optional[Path] = typer.Option(  # noqa: UP045
        None,
        "--output",
        "-o",
        help="Write per-item results as JSONL (can be scored again with --predictions).",
    ),
    cache: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--cache", help="SQLite file caching results per (model fingerprint, task, split)."
    ),
) -> None:
    """Print per-task scores of MODEL (or of saved --predictions) on the config's tasks."""
    from cycleqd.evaluation.model_scores import evaluate_model, score_predictions_file
    from cycleqd.evaluation.predictions import write_item_results

    if (model is None) == (predictions is None):
        raise ConfigError("give either a MODEL folder or --predictions FILE (not both)")
    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    err = Console(stderr=True)

    def progress(msg: str) -> None:
        err.print(f"[dim]{msg}[/]", highlight=False)

    if predictions is not None:
        if cache is not None:
            raise ConfigError("--cache applies to models, not to --predictions")
        report = score_predictions_file(
            predictions, config=config, split=split, tasks=names, progress=progress
        )
    else:
        assert model is not None
        report = evaluate_model(
            model, config=config, split=split, tasks=names, cache_file=cache, progress=progress
        )
    if output is not None:
        write_item_results(output, report.results)
        progress(f"per-item results written to {output}")
    if as_json:
        typer.echo(json.dumps(report.summary(), indent=2))
        return
    source = report.model or report.predictions
    table = Table(title=f"{source} — {report.split}")
    table.add_column("task")
    table.add_column("score", justify="right")
    table.add_column("correct", justify="right")
    for name, result in report.results.items():
        correct = sum(1 for i in result.items if i.correct)
        table.add_row(name, f"{result.score:.4f}", f"{correct}/{len(result.items)}")
    console = Console()
    console.print(table)
    if report.isolation:
        console.print(f"[dim]sandbox isolation: {', '.join(report.isolation)}[/]", highlight=False)
