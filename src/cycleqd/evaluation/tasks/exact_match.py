"""``exact_match``: prompt → expected answer, compared after normalisation.

Item fields: ``prompt`` (text), ``answer`` (text, number, or a list of accepted answers).
"""

from __future__ import annotations

import re
import string
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from cycleqd.evaluation.base import ItemResult
from cycleqd.evaluation.tasks.common import BuiltinTask, GenerationParams, Item, clip, failed, passed

Normalizer = Literal[
    "strip", "lower", "collapse_whitespace", "remove_punctuation", "remove_articles", "first_line"
]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_PUNCT = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


class ExactMatchParams(GenerationParams):
    """Options of ``exact_match``.

    Attributes:
        normalize: Steps applied in order to both the answer and the expected text: ``strip``,
            ``lower``, ``collapse_whitespace``, ``remove_punctuation``, ``remove_articles``
            (a/an/the), ``first_line``.
        answer_pattern: Regular expression that finds the answer in the output (group 1 if it has
            groups, else the whole match); no match is a malformed answer.
        match: ``exact`` (equal after normalisation) or ``contains`` (expected text inside the answer).
        numeric: Compare as numbers when both sides parse as numbers (``3.0`` equals ``3``).
        tolerance: Absolute tolerance of numeric comparisons.
    """

    normalize: list[Normalizer] = Field(default_factory=lambda: ["strip"])
    answer_pattern: str | None = None
    match: Literal["exact", "contains"] = "exact"
    numeric: bool = False
    tolerance: float = Field(1e-6, ge=0)

    @field_validator("answer_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"answer_pattern is not a valid regular expression: {exc}") from None
        return value


class ExactMatchItem(Item):
    """An ``exact_match`` item."""

    prompt: str
    answer: str | int | float | list[str | int | float]

    @property
    def answers(self) -> list[str]:
        """Accepted answers as text."""
        raw = self.answer if isinstance(self.answer, list) else [self.answer]
        return [str(a) for a in raw]


def normalize(text: str, steps: list[str]) -> str:
    """Apply normalisation steps in order.

    Args:
        text: The text.
        steps: Step names (see :class:`ExactMatchParams`).

    Returns:
        The normalised text.
    """
    for step in steps:
        if step == "strip":
            text = text.strip()
        elif step == "lower":
            text = text.lower()
        elif step == "collapse_whitespace":
            text = " ".join(text.split())
        elif step == "remove_punctuation":
            text = text.translate(_PUNCT)
        elif step == "remove_articles":
            text = _ARTICLES.sub(" ", text)
        elif step == "first_line":
            text = text.strip().split("\n", 1)[0] if text.strip() else ""
    return text


class ExactMatchTask(BuiltinTask[ExactMatchParams, ExactMatchItem]):
    """Prompt → answer, right when the normalised answer equals (or contains) an accepted one."""

    kind: ClassVar[str] = "exact_match"

    params_model = ExactMatchParams
    item_model = ExactMatchItem
    default_template = "{prompt}"

    def judge(self, item: ExactMatchItem, output: str) -> ItemResult:  # noqa: D102
        p = self.params
        answer = output
        if p.answer_pattern is not None:
            m = re.search(p.answer_pattern, output)
            if m is None:
                return failed(
                    item, output, f"malformed: no answer matching /{p.answer_pattern}/ in the output"
                )
            answer = m.group(1) if m.groups() else m.group(0)
        got = normalize(answer, p.normalize)
        expected = [normalize(a, p.normalize) for a in item.answers]
        for exp in expected:
            if self._same(got, exp):
                return passed(item, output, answer=got, expected=item.answers)
        return failed(
            item, output, f"expected {clip(expected[0])}, got {clip(got)}", answer=got, expected=item.answers
        )

    def _same(self, got: str, exp: str) -> bool:
        p = self.params
        if p.numeric and _NUMBER.match(got.strip()) and _NUMBER.match(exp.strip()):
            return abs(float(got) - float(exp)) <= p.tolerance
        return exp in got if p.match == "contains" else got == exp
