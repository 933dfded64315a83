"""The Markdown report of any run folder: archives, final models and their test scores, plots.

It reads only the run folder (``config.yaml``, ``checkpoint.json``, ``metrics.jsonl``), so it works on a
run in progress, a finished run, or a copy of a run folder on another machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cycleqd.atomic import atomic_write_text
from cycleqd.engine.paths import RunPaths
from cycleqd.engine.state import RunState
from cycleqd.errors import CycleQDError
from cycleqd.qd import archive_metrics
from cycleqd.report.plots import plot_archives, plot_curves, read_metrics


@dataclass
class RunFigures:
    """The plots of one run.

    Attributes:
        archives: The archive heatmaps.
        curves: QD-score and best-score curves (empty when no generation ran yet).
    """

    archives: Path
    curves: list[Path]


def load_state(run_dir: str | Path) -> tuple[RunPaths, RunState]:
    """Open a run folder's checkpoint.

    Args:
        run_dir: The run folder.

    Returns:
        Its paths and state.

    Raises:
        CycleQDError: When the folder holds no checkpoint.
    """
    paths = RunPaths(Path(run_dir).resolve())
    if not paths.checkpoint.is_file():
        raise CycleQDError(
            f"{paths.root} holds no run (no checkpoint.json); give the folder of a `cycleqd run` or "
            "`cycleqd demo`"
        )
    return paths, RunState.load(paths.checkpoint)


def draw_run(paths: RunPaths, state: RunState, out_dir: Path, *, prefix: str = "") -> RunFigures:
    """Draw a run's archives and curves.

    Args:
        paths: The run's paths.
        state: Its state.
        out_dir: Folder for the PNG files.
        prefix: Prefix of the file names.

    Returns:
        The figures.
    """
    archives = plot_archives(state.archives, out_dir, prefix=prefix)
    curves = plot_curves(
        read_metrics(paths.metrics), out_dir, initial=state.initial_metrics or None, prefix=prefix
    )
    return RunFigures(archives=archives, curves=curves)


def fmt(value: float | None, digits: int = 3) -> str:
    """A score for tables (``-`` when missing)."""
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table.

    Args:
        header: Column names.
        rows: Cells (converted with ``str``).

    Returns:
        The table, ending with a newline.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def run_sections(
    paths: RunPaths, state: RunState, figures: RunFigures, *, relative_to: Path, title: str | None = None
) -> str:
    """The Markdown of a run: progress, archives, final models, plots.

    Args:
        paths: The run's paths.
        state: Its state.
        figures: Its plots.
        relative_to: Folder the report is written in (image links are relative to it).
        title: Heading of the section (default: the run folder's name).

    Returns:
        Markdown text.
    """
    tasks = list(state.tasks)
    out = [f"## {title or paths.root.name}\n"]
    done = "finished" if state.finished else "in progress"
    out.append(f"Generation {state.generation}/{state.generations} ({done}); tasks: {', '.join(tasks)}.\n")
    rows = []
    for task in tasks:
        m = archive_metrics(state.archives[task])
        spec_txt = ", ".join(
            f"{t} [{s.low:.2f}, {s.high:.2f}]×{s.bins}" for t, s in state.archives[task].bin_specs.items()
        )
        best = m["best"] or {}
        rows.append(
            [
                task,
                f"{m['filled']}/{m['cells']}",
                f"{m['coverage']:.1%}",
                fmt(m["qd_score"], 2),
                best.get("model", "-"),
                fmt(best.get("score")),
                spec_txt,
            ]
        )
    out.append(
        markdown_table(
            ["archive", "filled", "coverage", "QD score", "best model", "best score", "bins (range × bins)"],
            rows,
        )
    )
    children = [r for r in state.registry if r.kind.value in ("child", "seed")]
    if children:
        counts: dict[str, int] = {}
        for r in children:
            counts[r.status.value] = counts.get(r.status.value, 0) + 1
        out.append("Children and seeds: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".\n")
    if state.finished and state.final:
        out.append(_final_section(state, tasks))
    out.append(f"![archives]({_relative(figures.archives, relative_to)})\n")
    for path in figures.curves:
        out.append(f"![{path.stem}]({_relative(path, relative_to)})\n")
    return "\n".join(out)


def _final_section(state: RunState, tasks: list[str]) -> str:
    final = state.final
    agg = final["aggregate"]
    lines = ["### Final models (test split)\n"]
    weights = ", ".join(f"{t}: {agg['elites'][t]} × {agg['weights'][t]:.3f}" for t in tasks)
    lines.append(f"Aggregate θ0 + Σ softmax(f/T)ₖ τₖ of the archive bests: {weights}.\n")
    choice = final.get("recommended")
    if choice:
        how = (
            f"the best on the select split among the {choice['top_k']} best elites by validation average "
            "and the aggregate"
            if choice["split"] == "select"
            else "chosen on validation (the tasks have no select split, so this is the split that drove "
            "evolution and the choice is optimistic)"
        )
        lines.append(f"**Recommended model: `{choice['model']}`** (`final/`): {how}.\n")
    rows = []
    for model_id, scores in final["test_scores"].items():
        rec = state.registry[model_id] if model_id in state.registry else None  # noqa: SIM401 (no .get)
        val = rec.scores.get("validation", {}) if rec else {}
        val_avg = sum(val.values()) / len(val) if val else None
        role = []
        if choice and model_id == choice["model"]:
            role.append("**recommended**")
        if model_id == final.get("best_average"):
            role.append("best validation average")
        role += [f"best {t}" for t, b in final["best_per_task"].items() if b["model"] == model_id]
        sel = rec.scores.get("select", {}) if rec else {}
        avg = sum(scores[t] for t in tasks) / len(tasks)
        rows.append(
            [
                model_id,
                ", ".join(role) or (rec.kind.value if rec else ""),
                *(fmt(scores[t]) for t in tasks),
                fmt(avg),
                fmt(val_avg),
                fmt(sum(sel.values()) / len(sel) if sel else None),
            ]
        )
    lines.append(
        markdown_table(
            ["model", "role", *tasks, "test average", "validation average", "select average"], rows
        )
    )
    return "\n".join(lines)


def write_run_report(run_dir: str | Path, *, extra: Mapping[str, str] | None = None) -> Path:
    """Write ``report.md`` and ``plots/`` into a run folder.

    Args:
        run_dir: The run folder.
        extra: Title → Markdown of further sections, appended.

    Returns:
        The report file.

    Raises:
        CycleQDError: When the folder holds no run.
    """
    paths, state = load_state(run_dir)
    figures = draw_run(paths, state, paths.plots)
    text = ["# CycleQD run report\n", f"Run folder: `{paths.root}`\n"]
    text.append(run_sections(paths, state, figures, relative_to=paths.root, title="Run"))
    for title, body in (extra or {}).items():
        text.append(f"## {title}\n\n{body}")
    atomic_write_text(paths.report, "\n".join(text))
    return paths.report
