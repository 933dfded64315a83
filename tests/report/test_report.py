"""Reports of plain run folders: plots from the checkpoint and metrics, Markdown, ``cycleqd report``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from toyrun import cli, write_toy_config

from cycleqd.engine.paths import RunPaths
from cycleqd.engine.state import RunState
from cycleqd.errors import CycleQDError
from cycleqd.report import write_run_report
from cycleqd.report.plots import curves, plot_archives, plot_bars, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"
GENERATIONS = 12


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    config = write_toy_config(folder, generations=GENERATIONS)
    cli("run", str(config), "--out", str(folder / "run"), "--no-progress")
    return folder / "run"


def test_curves_follow_the_metrics(toy_run: Path) -> None:
    paths = RunPaths(toy_run)
    state = RunState.load(paths.checkpoint)
    lines = read_metrics(paths.metrics)
    assert [line["generation"] for line in lines] == list(range(GENERATIONS))
    series = curves(lines, state.initial_metrics)
    x = series.pop("generation")["x"]
    assert list(x) == list(range(GENERATIONS + 1))
    for task, s in series.items():
        # An archive only ever gains or improves cells: QD score and best never go down.
        assert np.all(np.diff(s["qd_score"]) >= -1e-12), task
        assert np.all(np.diff(s["best"]) >= -1e-12), task
        assert s["qd_score"][-1] == pytest.approx(lines[-1]["metrics"][task]["qd_score"])
        assert s["filled"][0] == state.initial_metrics[task]["filled"]


def test_heatmaps_show_every_elite(toy_run: Path, tmp_path: Path) -> None:
    state = RunState.load(RunPaths(toy_run).checkpoint)
    for task in state.tasks:
        grid = state.archives[task].quality_grid()
        assert int(np.isfinite(grid).sum()) == len(state.archives[task])
    path = plot_archives(state.archives, tmp_path, prefix="x-")
    assert path.name == "x-archives.png"
    assert path.read_bytes()[:8] == PNG


def test_run_report_markdown_and_plots(toy_run: Path) -> None:
    report = write_run_report(toy_run)
    text = report.read_text()
    state = RunState.load(RunPaths(toy_run).checkpoint)
    assert f"Generation {GENERATIONS}/{GENERATIONS} (finished)" in text
    for task in state.tasks:
        assert f"| {task} |" in text
    assert "### Final models (test split)" in text
    assert "| aggregate |" in text
    for name in ("archives.png", "qd_score.png", "best_scores.png"):
        assert (toy_run / "plots" / name).read_bytes()[:8] == PNG
        assert f"(plots/{name})" in text


def test_report_command_on_a_plain_run(toy_run: Path) -> None:
    (toy_run / "report.md").unlink(missing_ok=True)
    proc = cli("report", str(toy_run))
    assert "report:" in proc.stdout
    assert (toy_run / "report.md").is_file()


def test_a_folder_without_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CycleQDError, match="holds no run"):
        write_run_report(tmp_path)
    proc = cli("report", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "holds no run" in proc.stderr


def test_bars(tmp_path: Path) -> None:
    rows = [{"name": "a", "average": 0.5}, {"name": "b", "average": 0.7}]
    path = plot_bars(rows, tmp_path / "bars.png", title="t", errors={"a": 0.1})
    assert path.read_bytes()[:8] == PNG
    assert json.dumps(rows)  # rows are left untouched
