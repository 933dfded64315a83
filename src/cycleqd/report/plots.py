"""Plots of a run: archive heatmaps per task, QD-score and best-score curves over generations.

Everything is drawn with matplotlib's Agg backend (no display needed) from the run folder's files alone:
the archives from ``checkpoint.json``, the curves from ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cycleqd.qd import ArchiveSet


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` (unreadable lines are skipped), ordered by generation.

    Args:
        path: The file.

    Returns:
        One dict per generation.
    """
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict) and "generation" in line:
            lines.append(line)
    return sorted(lines, key=lambda d: d["generation"])


def curves(
    metrics: Sequence[Mapping[str, Any]], initial: Mapping[str, Any] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Per-task series over generations: ``qd_score``, ``best``, ``filled``.

    Args:
        metrics: Lines of ``metrics.jsonl``.
        initial: Archive metrics after the experts were inserted (generation 0 of the curves).

    Returns:
        ``{"generation": {"x": gens}, task: {"qd_score": ..., "best": ..., "filled": ...}}``; the x axis
        counts generations done (0 = the experts only).
    """
    rows: list[tuple[int, Mapping[str, Any]]] = []
    if initial:
        rows.append((0, initial))
    rows += [(int(m["generation"]) + 1, m["metrics"]) for m in metrics if m.get("metrics")]
    tasks = list(rows[0][1]) if rows else []
    out: dict[str, dict[str, np.ndarray]] = {"generation": {"x": np.array([g for g, _ in rows])}}
    for task in tasks:
        best = [(m[task].get("best") or {}).get("score", np.nan) for _, m in rows]
        out[task] = {
            "qd_score": np.array([m[task]["qd_score"] for _, m in rows], dtype=float),
            "best": np.array(best, dtype=float),
            "filled": np.array([m[task]["filled"] for _, m in rows], dtype=float),
        }
    return out


def plot_curves(
    metrics: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    initial: Mapping[str, Any] | None = None,
    prefix: str = "",
) -> list[Path]:
    """Draw the QD score and the best score of each archive over generations.

    Args:
        metrics: Lines of ``metrics.jsonl``.
        out_dir: Folder for the PNG files.
        initial: Archive metrics before the first generation.
        prefix: Prefix of the file names.

    Returns:
        The files written (none when there is nothing to draw).
    """
    series = curves(metrics, initial)
    x = series.pop("generation")["x"]
    if not series or len(x) == 0:
        return []
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, label, name in (
        ("qd_score", "QD score (sum of the archive's qualities)", "qd_score.png"),
        ("best", "best score in the archive", "best_scores.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for task, s in series.items():
            ax.plot(x, s[key], label=task, drawstyle="steps-post")
        ax.set_xlabel("generation")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(title="archive")
        fig.tight_layout()
        path = out_dir / f"{prefix}{name}"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_archives(archives: ArchiveSet, out_dir: Path, *, prefix: str = "") -> Path:
    """Draw each task's archive as a heatmap of the elites' qualities over the other tasks' bins.

    With three tasks each archive is a grid over the two other tasks' scores; with two it is one row;
    with more, the first two other tasks are shown and each pixel is the best quality over the rest.

    Args:
        archives: The archives.
        out_dir: Folder for the PNG file.
        prefix: Prefix of the file name.

    Returns:
        The file written (``archives.png``).
    """
    plt = _pyplot()
    tasks = list(archives.tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.9), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        archive = archives[task]
        grid = archive.quality_grid()
        measures = list(archive.measure_tasks)
        specs = archive.bin_specs
        while grid.ndim > 2:  # best quality over the extra dimensions
            with np.errstate(all="ignore"):
                grid = np.fmax.reduce(grid, axis=-1)
        if grid.ndim == 1:
            grid = grid[None, :]
        # Rows: first measure task (y); columns: second (x).
        y_spec = specs[measures[0]]
        if len(measures) > 1:
            x_spec = specs[measures[1]]
            extent = (x_spec.low, x_spec.high, y_spec.low, y_spec.high)
            ax.set_xlabel(f"{measures[1]} score")
            ax.set_ylabel(f"{measures[0]} score")
        else:
            extent = (y_spec.low, y_spec.high, 0, 1)
            ax.set_xlabel(f"{measures[0]} score")
            ax.set_yticks([])
        image = ax.imshow(
            np.ma.masked_invalid(grid), origin="lower", extent=extent, aspect="auto", cmap="viridis"
        )
        ax.set_title(f"archive {task}: {len(archive)}/{archive.n_cells} cells", fontsize=10)
        fig.colorbar(image, ax=ax, label=f"{task} score (quality)")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{prefix}archives.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bars(
    rows: Sequence[Mapping[str, Any]],
    out_path: Path,
    *,
    title: str,
    errors: Mapping[str, float] | None = None,
) -> Path:
    """A horizontal bar chart of models' averages (for results tables).

    Args:
        rows: Dicts with ``name`` and ``average`` (drawn in order, top to bottom).
        out_path: The PNG file.
        title: Title of the chart.
        errors: Name → half-width of an error bar.

    Returns:
        The file written.
    """
    plt = _pyplot()
    names = [r["name"] for r in rows]
    values = [r["average"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(rows) + 1.2))
    xerr = [errors.get(n, 0.0) for n in names] if errors else None
    ax.barh(range(len(rows)), values, xerr=xerr, color="tab:blue", alpha=0.8)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("test average")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
