"""The demo's data on disk and in training mixes.

Evaluation data is written as JSONL in the formats the evaluation task kinds read (``python_code``,
``sql``, ``shell``), one file per skill with a ``split`` field on each item, together with the task
entries of a run config. Training data are (question, answer) pairs drawn from mixes of skills.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cycleqd.atomic import atomic_write_text
from cycleqd.demo.skills import CODE_PREFIX, PROMPT, SKILLS, SkillItem, SkillSplits, format_item

#: The splits written for evaluation (train items are only for training).
EVAL_SPLITS = ("validation", "select", "test")

#: The evaluation task kind of each skill.
TASK_KINDS: dict[str, str] = {"code": "python_code", "db": "sql", "os": "shell"}


def task_record(item: SkillItem, split: str) -> dict[str, Any]:
    """An item as a line of its task kind's JSONL.

    Args:
        item: A code, db or os item.
        split: ``validation``, ``select`` or ``test``.

    Returns:
        The JSON object.

    Raises:
        ValueError: For a skill without a task kind.
    """
    base = {"id": item.id, "split": split, "template": item.template}
    if item.skill == "code":
        return {**base, "prompt": item.question, "tests": item.check["tests"], "reference": item.answer}
    if item.skill == "db":
        return {**base, "question": item.question, "tables": item.check["tables"], "reference": item.answer}
    if item.skill == "os":
        return {**base, "instruction": item.question, "files": item.check["files"], "reference": item.answer}
    raise ValueError(f"skill {item.skill!r} has no evaluation task")


def write_task_data(splits: Mapping[str, SkillSplits], folder: Path) -> dict[str, Path]:
    """Write the evaluation items of each skill as JSONL (one file per skill, a split on each item).

    Args:
        splits: Skill → its splits.
        folder: Destination folder.

    Returns:
        Skill → file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for skill, sp in splits.items():
        rows = [task_record(i, split) for split in EVAL_SPLITS for i in sp.split(split)]
        path = folder / f"{skill}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        out[skill] = path
    return out


def max_answer_chars(splits: Mapping[str, SkillSplits], skill: str) -> int:
    """The longest reference answer of a skill, over all splits."""
    sp = splits[skill]
    return max(len(i.answer) for part in ("train", *EVAL_SPLITS) for i in sp.split(part))


def task_specs(
    files: Mapping[str, Path], splits: Mapping[str, SkillSplits], *, limit: int | None = None
) -> list[dict[str, Any]]:
    """The ``tasks:`` entries of a run config for the demo's skills.

    The prompt is the demo's ``Q:{question} A:`` format; the model's answer ends with its
    end-of-sequence token, and code answers complete ``def f(x): return``.

    Args:
        files: Skill → JSONL file (from :func:`write_task_data`).
        splits: Skill → splits (for the answer lengths).
        limit: Use only the first items of each split.

    Returns:
        One task entry per skill, in :data:`~cycleqd.demo.skills.SKILLS` order.
    """
    fields = {"code": "prompt", "db": "question", "os": "instruction"}
    specs = []
    for skill in SKILLS:
        params: dict[str, Any] = {
            "prompt_template": PROMPT.replace("{question}", "{" + fields[skill] + "}"),
            # A character-level model: one token per character, with room for a few wrong ones.
            "max_new_tokens": max_answer_chars(splits, skill) + 6,
            "extract": "raw",
            "timeout_s": 10.0,
        }
        if skill == "code":
            params["answer_prefix"] = CODE_PREFIX
        if limit is not None:
            params["limit"] = limit
        specs.append({"name": skill, "kind": TASK_KINDS[skill], "data": str(files[skill]), "params": params})
    return specs


@dataclass(frozen=True)
class MixPart:
    """One source of a training mix.

    Attributes:
        source: A skill whose train items are drawn, or ``format`` for generic format items.
        weight: Relative probability of drawing from it.
        templates: The skill's templates allowed (``None``: all).
    """

    source: str
    weight: float
    templates: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Mix:
    """A training mix: sources drawn with given probabilities.

    Attributes:
        parts: The sources.
    """

    parts: tuple[MixPart, ...]

    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready form (for the recipe's hash and the report)."""
        return [
            {"source": p.source, "weight": p.weight, "templates": list(p.templates) if p.templates else None}
            for p in self.parts
        ]

    def scaled(self, factor: float) -> tuple[MixPart, ...]:
        """The parts with weights normalised to sum to ``factor``."""
        total = sum(p.weight for p in self.parts)
        return tuple(MixPart(p.source, p.weight * factor / total, p.templates) for p in self.parts)


def union_mix(mixes: Sequence[Mix]) -> Mix:
    """The mix that draws from each of several mixes with equal probability.

    Args:
        mixes: The mixes (for instance the experts' mixes).

    Returns:
        One mix holding every part of every mix.
    """
    return Mix(parts=tuple(p for m in mixes for p in m.scaled(1.0 / len(mixes))))


class MixSampler:
    """Draws (prompt, answer) pairs from a mix, uniformly over the templates of each part.

    Drawing a template first, then one of its items, keeps small templates from being drowned by
    large ones.

    Args:
        mix: The mix.
        splits: Skill → splits (train items are used).
        rng: The generator (seeded by the caller).

    Raises:
        ValueError: When a part names an unknown skill or template, or leaves no item.
    """

    def __init__(self, mix: Mix, splits: Mapping[str, SkillSplits], rng: random.Random) -> None:
        self.rng = rng
        self._parts: list[tuple[MixPart, list[list[SkillItem]]]] = []
        for part in mix.parts:
            if part.weight <= 0:
                continue
            if part.source == "format":
                self._parts.append((part, []))
                continue
            if part.source not in splits:
                raise ValueError(f"mix source {part.source!r} is not a skill ({', '.join(splits)}) or format")
            pools: dict[str, list[SkillItem]] = {}
            for item in splits[part.source].train:
                if part.templates is None or item.template in part.templates:
                    pools.setdefault(item.template, []).append(item)
            missing = sorted(set(part.templates or ()) - set(pools))
            if missing or not pools:
                raise ValueError(
                    f"mix source {part.source!r}: no training item for template(s) "
                    f"{', '.join(missing) or 'any'}"
                )
            self._parts.append((part, [pools[k] for k in sorted(pools)]))
        if not self._parts:
            raise ValueError("the mix has no source with a positive weight")
        self._weights = [p.weight for p, _ in self._parts]

    def draw(self) -> SkillItem:
        """One item."""
        part, pools = self.rng.choices(self._parts, weights=self._weights)[0]
        if part.source == "format":
            return format_item(self.rng)
        pool = pools[self.rng.randrange(len(pools))]
        return pool[self.rng.randrange(len(pool))]

    def batch(self, n: int) -> list[tuple[str, str]]:
        """``n`` (prompt, answer) pairs."""
        return [(i.prompt, i.answer) for i in (self.draw() for _ in range(n))]
