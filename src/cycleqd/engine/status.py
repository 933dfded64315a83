"""A run's status, read from its checkpoint alone (no model is loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cycleqd.engine.paths import RunPaths
from cycleqd.engine.state import RunState
from cycleqd.errors import CycleQDError
from cycleqd.qd import archive_metrics


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """Summarise a run for ``cycleqd status``.

    Args:
        run_dir: The run folder.

    Returns:
        ``generation``, ``generations``, ``finished``, ``tasks``, ``archives`` (per task ``filled``,
        ``cells``, ``coverage``, ``qd_score``, ``best`` with ``model`` and ``score``), ``children``
        and ``seeds`` (counts by status) and, once finished, ``recommended`` (the chosen model:
        ``model``, ``split`` it was chosen on, ``path``, ``test_scores``), ``aggregate`` (``path``,
        ``test_scores``, ...) and ``final`` (all test scores).

    Raises:
        CycleQDError: If the folder holds no checkpoint.
    """
    paths = RunPaths(Path(run_dir).resolve())
    if not paths.checkpoint.exists():
        if paths.config.exists():
            raise CycleQDError(
                f"{paths.root} has not finished initialising (no checkpoint yet); "
                f"`cycleqd resume {run_dir}` starts it again"
            )
        raise CycleQDError(f"{paths.root} holds no run (no checkpoint.json)")
    state = RunState.load(paths.checkpoint)
    counts: dict[str, dict[str, int]] = {"child": {}, "seed": {}}
    for rec in state.registry:
        if rec.kind.value in counts:
            by_status = counts[rec.kind.value]
            by_status[rec.status.value] = by_status.get(rec.status.value, 0) + 1
    info: dict[str, Any] = {
        "run": str(paths.root),
        "generation": state.generation,
        "generations": state.generations,
        "finished": state.finished,
        "tasks": state.tasks,
        "archives": {t: archive_metrics(state.archives[t]) for t in state.tasks},
        "children": counts["child"],
        "seeds": counts["seed"],
    }
    if state.finished:
        recommended = state.final.get("recommended")
        if recommended:
            model = recommended["model"]
            info["recommended"] = {
                "model": model,
                "split": recommended["split"],
                "path": str(paths.root / recommended["path"]),
                "test_scores": state.final["test_scores"].get(model),
            }
        info["aggregate"] = state.final["aggregate"]
        info["final"] = state.final
    return info
