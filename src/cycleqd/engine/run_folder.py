"""The run folder's upkeep: its lock, its append-only metrics, garbage collection and repair on resume.

Write order of a generation (each write atomic): the accepted child's weights, its metrics line, the
checkpoint, then deletion of the weights no archive refers to any more. On resume,
:func:`recover_folder` brings the folder back in line with the checkpoint: metrics lines past it and
model folders it does not refer to are removed, and elites whose weights are damaged are reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cycleqd.atomic import atomic_write_text
from cycleqd.engine.model_registry import ModelRegistry, ModelStatus
from cycleqd.engine.paths import RunPaths
from cycleqd.engine.state import RunState
from cycleqd.errors import CycleQDError
from cycleqd.weights import open_model


def refuse_taken(paths: RunPaths, out: str | Path) -> None:
    """Refuse a run folder that is a file, holds a run or holds anything but a lock file.

    Args:
        paths: The new run's folder.
        out: The folder as the user gave it (for the message).

    Raises:
        CycleQDError: Naming the folder and what to do instead.
    """
    if paths.root.exists() and not paths.root.is_dir():
        raise CycleQDError(f"{paths.root} is a file, not a folder; give a new folder as --out")
    if paths.checkpoint.exists() or paths.config.exists():
        raise CycleQDError(
            f"{paths.root} already holds a run; continue it with `cycleqd resume {out}` or give another --out"
        )
    if paths.root.exists() and any(p.name != ".lock" for p in paths.root.iterdir()):
        raise CycleQDError(f"{paths.root} is not empty; give a new or empty folder as --out")


@contextlib.contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """Hold an exclusive lock on the run folder (released by the OS if the process dies).

    Args:
        paths: The run's folder (made if missing).

    Yields:
        Nothing; the lock is held inside the block.

    Raises:
        CycleQDError: If another process is working on the run.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    fh = open(paths.lock, "w")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CycleQDError(
                f"another process is working on {paths.root}; wait for it to finish or stop it"
            ) from None
        yield
    finally:
        fh.close()


def crash_point(point: str, generation: int) -> None:
    """Kill this process with SIGKILL here when ``CYCLEQD_CRASH_AT`` is ``point:generation``.

    A testing hook: the resume tests stop runs at exact places of the write sequence (after a child's
    weights, after its metrics line, after the checkpoint, after the aggregate) and check that the
    resumed run ends as an uninterrupted one. Unset, it costs one dictionary lookup.

    Args:
        point: Name of the place.
        generation: The generation being written.
    """
    target = os.environ.get("CYCLEQD_CRASH_AT")
    if target and target == f"{point}:{generation}":
        os.kill(os.getpid(), signal.SIGKILL)


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree, if it exists."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def append_line(path: Path, data: Mapping[str, Any]) -> None:
    """Append one JSON line to a file and flush it to disk (``metrics.jsonl``)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(data, allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _line_generation(line: str) -> int | None:
    try:
        return int(json.loads(line)["generation"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def model_path(paths: RunPaths, registry: ModelRegistry, model_id: str) -> str:
    """The absolute folder of a model's weights (the run folder's own are stored relative to it).

    Args:
        paths: The run folder.
        registry: The run's models.
        model_id: A model with weights.

    Returns:
        The path.
    """
    rec = registry[model_id]
    assert rec.path is not None, f"model {model_id} has no weights"
    p = Path(rec.path)
    return str(p if p.is_absolute() else paths.root / p)


def collect_garbage(paths: RunPaths, state: RunState) -> None:
    """Delete the weights of children that no archive holds and no job in flight needs.

    Also removes folders written before a checkpoint that never came and temporary folders of
    interrupted writes. A released parent of a job still in flight (Ray runner) is kept until
    that job has been incorporated.

    Args:
        paths: The run folder.
        state: The run state as checkpointed.
    """
    keep = {r.id for r in state.registry if r.kind.stored_in_run and r.status is ModelStatus.ELITE}
    keep.update(p for job in state.in_flight for p in job.parents)
    if paths.models.exists():
        for entry in paths.models.iterdir():
            if entry.name not in keep:
                remove_path(entry)


def recover_folder(paths: RunPaths, state: RunState) -> None:
    """Bring the folder back in line with the checkpoint after a stop at any moment.

    Jobs in flight name their parents by absolute path, and the folder may have moved since: their
    paths are made again. Metrics lines written after the checkpoint are dropped (those generations
    run again), weights it does not refer to and temporary files are removed.

    Args:
        paths: The run folder.
        state: The checkpointed state (its jobs in flight are updated).

    Raises:
        CycleQDError: When an elite's weights are missing or damaged (the run cannot resume exactly).
    """

    def parent_path(model_id: str) -> str:
        if state.registry[model_id].path is None:  # a released parent of a job in flight: kept on disk
            return str(paths.model_dir(model_id))
        return model_path(paths, state.registry, model_id)

    state.in_flight = [
        dataclasses.replace(j, parent_paths=tuple(parent_path(p) for p in j.parents)) for j in state.in_flight
    ]
    if paths.metrics.exists():
        kept = [
            ln
            for ln in paths.metrics.read_text().splitlines()
            if ln.strip() and _line_generation(ln) is not None and _line_generation(ln) < state.generation
        ]
        atomic_write_text(paths.metrics, "".join(k + "\n" for k in kept))
    collect_garbage(paths, state)
    for entry in paths.root.glob(".*.tmp-*"):
        remove_path(entry)
    damaged = []
    for rec in state.registry:
        if rec.kind.stored_in_run and rec.status is ModelStatus.ELITE:
            try:
                src = open_model(model_path(paths, state.registry, rec.id), name=rec.id)
                src.shape(next(iter(src)))
            except Exception as exc:
                damaged.append(f"{rec.id} ({type(exc).__name__}: {exc})")
    if damaged:
        raise CycleQDError(
            f"the weights of {len(damaged)} elite(s) in {paths.models} are missing or damaged "
            f"(a power loss without models.durable_writes?): {'; '.join(damaged[:5])}; "
            "the run cannot resume exactly; start it again"
        )
