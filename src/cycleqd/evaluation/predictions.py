"""Saved model outputs: reading them for re-scoring, writing per-item results for audits.

A predictions file is JSONL, one object per line: ``{"task": NAME, "id": ITEM_ID, "output": TEXT}``
(for ``agent`` tasks ``output`` is the list of the model's turns). Other keys are ignored, so the
per-item file that ``cycleqd eval --output`` writes can be scored again as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cycleqd.errors import ConfigError
from cycleqd.evaluation.base import Task, TaskResult


def read_predictions(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a predictions file.

    Args:
        path: The JSONL file.

    Returns:
        Task name → item id → output.

    Raises:
        ConfigError: For a missing file, bad lines, or an item given twice.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"predictions file {path} does not exist")
    out: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where} is not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{where} must be a JSON object with task, id and output")
            missing = [k for k in ("task", "id", "output") if k not in obj]
            if missing:
                raise ConfigError(f"{where} lacks {', '.join(missing)}; each line needs task, id and output")
            task, item_id, output = str(obj["task"]), str(obj["id"]), obj["output"]
            if not isinstance(output, (str, list)):
                raise ConfigError(f"{where}: output must be text (or a list of turns for agent tasks)")
            if item_id in out.setdefault(task, {}):
                raise ConfigError(f"{where}: task {task} item {item_id} appears twice")
            out[task][item_id] = output
    return out


def check_predictions(
    predictions: Mapping[str, Mapping[str, Any]], tasks: Mapping[str, Task], *, split: str
) -> None:
    """Refuse predictions for unknown tasks or items before scoring anything.

    Args:
        predictions: Task name → item id → output.
        tasks: The config's tasks by name.
        split: The split being scored.

    Raises:
        ConfigError: Naming the unknown tasks or item ids.
    """
    unknown = sorted(set(predictions) - set(tasks))
    if unknown:
        raise ConfigError(
            f"predictions name task(s) {', '.join(unknown)} that the config lacks; "
            f"its tasks are {', '.join(tasks)}"
        )
    for name, preds in predictions.items():
        items = getattr(tasks[name], "items", None)
        if items is None:
            continue
        ids = {i.id for i in items(split)}
        strays = sorted(set(preds) - ids)
        if strays:
            shown = ", ".join(strays[:5]) + (f" and {len(strays) - 5} more" if len(strays) > 5 else "")
            raise ConfigError(
                f"predictions for task {name} name item(s) {shown} that are not in its {split} split "
                "(is --split right?)"
            )


def write_item_results(path: str | Path, results: Mapping[str, TaskResult]) -> Path:
    """Write one line per item: task, split, id, output (re-scorable), correct, score, reason, detail.

    Args:
        path: Destination JSONL file.
        results: Results by task.

    Returns:
        The file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for name, result in results.items():
            for item in result.items:
                output = item.detail.get("turns", item.output)
                if output is None:
                    output = ""
                line = {
                    "task": name,
                    "split": result.split,
                    "id": item.item_id,
                    "output": output,
                    "correct": item.correct,
                    "score": item.score,
                    "reason": item.reason,
                    # What the check saw (the program, its output and error tails, exit status).
                    "detail": {k: v for k, v in item.detail.items() if k != "turns"},
                }
                fh.write(json.dumps(line, default=str) + "\n")
    tmp.replace(path)
    return path
