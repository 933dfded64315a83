"""Whether the experts give evolution anything to work with, and a diagnosis when they do not.

When every expert scores zero on every task, the archives' bins collapse and every child scores zero
too: the run would spend its whole budget evolving noise. That nearly always means the evaluation does
not fit the models (a tokenizer or prompt format mismatch, a chat template on or off where it should
not be, answers cut by ``max_new_tokens``, a stop string that ends every answer at once), so the run
stops at once and shows what the experts wrote next to why it was judged wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

from cycleqd.errors import CycleQDError
from cycleqd.evaluation.base import TaskResult

#: Items shown per expert in the diagnosis.
SAMPLE = 3
#: Characters of an output shown (longer ones are cut with an ellipsis).
SHOWN = 120


class NoSignalError(CycleQDError):
    """The experts score zero on every task: the run would evolve noise."""


def check_signal(results: Mapping[str, Mapping[str, TaskResult]], *, split: str = "validation") -> None:
    """Refuse a run whose experts all score zero on every task.

    Args:
        results: Expert's task → the expert's results on every task (validation).
        split: The split the results are on (named in the message).

    Raises:
        NoSignalError: When no expert scores above zero on any task; the message samples each
            expert's outputs on its own task with the reason each was judged wrong.
    """
    if not results or any(r.score > 0 for per_task in results.values() for r in per_task.values()):
        return
    lines = [
        f"every expert scores 0 on every task ({split} split), so evolution would have no signal. "
        "This usually means the evaluation does not fit the models: check the prompt format and "
        "evaluation.chat_template, the tokenizer in the model folders, max_new_tokens and stop "
        "strings. What the experts wrote on their own task:"
    ]
    for task, per_task in results.items():
        result = per_task.get(task)
        items = result.items[:SAMPLE] if result is not None else []
        if not items:
            lines.append(f"  expert {task} on {task}: no per-item results to show")
            continue
        for item in items:
            output = item.output if item.output is not None else "(no output)"
            if len(output) > SHOWN:
                output = output[:SHOWN] + "…"
            lines.append(f"  expert {task}, item {item.item_id}: wrote {output!r}; {item.reason or 'wrong'}")
    lines.append("`cycleqd eval` scores one model and writes every item's output with `-o` to look closer")
    raise NoSignalError("\n".join(lines))
