"""``choice``: multiple choice, answered by the option the model finds most likely.

Item fields: ``prompt`` (the question as shown), ``choices`` (the options' texts), ``answer`` (index
of the right option, or its text). Each option is scored as the log-likelihood of
``choice_prefix + option`` after the prompt; the highest wins (ties go to the first).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from cycleqd.evaluation.base import Backend, ItemResult, Prompt
from cycleqd.evaluation.tasks.common import BuiltinTask, Item, Params, failed, passed


class ChoiceParams(Params):
    """Options of ``choice``.

    Attributes:
        choice_prefix: Text put before each option (a space by default, as after ``Answer:``).
        normalize: ``none`` compares summed log-likelihoods; ``length`` divides them by the option's
            length in characters (favours no option for being short).
    """

    choice_prefix: str = " "
    normalize: Literal["none", "length"] = "none"


class ChoiceItem(Item):
    """A ``choice`` item."""

    prompt: str
    choices: list[str] = Field(min_length=2)
    answer: int | str

    @model_validator(mode="after")
    def _answer_is_a_choice(self) -> ChoiceItem:
        if isinstance(self.answer, str):
            if self.answer not in self.choices:
                raise ValueError(f"answer {self.answer!r} is not one of the choices")
        elif not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer index {self.answer} is outside 0..{len(self.choices) - 1}")
        return self

    @property
    def answer_index(self) -> int:
        """Index of the right option."""
        return self.choices.index(self.answer) if isinstance(self.answer, str) else self.answer


class ChoiceTask(BuiltinTask[ChoiceParams, ChoiceItem]):
    """Multiple choice by the log-likelihood of each option."""

    kind: ClassVar[str] = "choice"

    params_model = ChoiceParams
    item_model = ChoiceItem
    default_template = "{prompt}"

    def run(self, backend: Backend, items: list[ChoiceItem]) -> list[ItemResult]:  # noqa: D102
        return [
            self._judge_scores(item, s)
            for item, s in zip(items, self._loglikelihoods(backend, items), strict=True)
        ]

    def _loglikelihoods(self, backend: Backend, items: list[ChoiceItem]) -> list[list[float]]:
        """Each item's options' log-likelihoods, in one batch of requests."""
        requests = []
        for item in items:
            prompt = self.prompt(item)
            requests.extend((prompt, self.params.choice_prefix + c) for c in item.choices)
        lls = backend.loglikelihood(requests)
        out, pos = [], 0
        for item in items:
            out.append(lls[pos : pos + len(item.choices)])
            pos += len(item.choices)
        return out

    def teacher_pairs(  # noqa: D102 - the prompt and the option the model picks (by the task's rule)
        self, backend: Backend, *, split: str = "validation", limit: int | None = None
    ) -> list[tuple[Prompt, str]]:
        items = self._require_items(split)[:limit]
        pairs = []
        for item, lls in zip(items, self._loglikelihoods(backend, items), strict=True):
            picked = self._judge_scores(item, lls).output  # None when the model gave NaN
            if picked is not None:
                pairs.append((self.prompt(item), self.params.choice_prefix + picked))
        return pairs

    def _judge_scores(self, item: ChoiceItem, lls: list[float]) -> ItemResult:
        if any(math.isnan(x) for x in lls):
            return failed(item, None, "the model gave NaN log-likelihoods", loglikelihoods=lls)
        if self.params.normalize == "length":
            scores = [
                ll / max(1, len(self.params.choice_prefix + c))
                for ll, c in zip(lls, item.choices, strict=True)
            ]
        else:
            scores = list(lls)
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        return self._verdict(item, best, loglikelihoods=lls)

    def _verdict(self, item: ChoiceItem, chosen: int, **detail: Any) -> ItemResult:
        output = item.choices[chosen]
        detail = {**detail, "chosen": chosen, "expected": item.answer_index}
        if chosen == item.answer_index:
            return passed(item, output, **detail)
        return failed(
            item,
            output,
            f"chose option {chosen} ({output!r}); the answer is option {item.answer_index}",
            **detail,
        )

    def judge(self, item: ChoiceItem, output: str) -> ItemResult:
        """Judge a saved answer: the option's text, or its index.

        Args:
            item: The item.
            output: The chosen option's text or its 0-based index.

        Returns:
            The item's result.
        """
        text = output.strip()
        if text in item.choices:
            return self._verdict(item, item.choices.index(text))
        if text.isdigit() and int(text) < len(item.choices):
            return self._verdict(item, int(text))
        return failed(
            item, output, "malformed: the prediction is neither one of the choices nor an option index"
        )

    def replay(self, items: list[ChoiceItem], predictions: Mapping[str, Any]) -> list[ItemResult]:  # noqa: D102
        fixed = {k: str(v) if isinstance(v, int) else v for k, v in predictions.items()}
        return super().replay(items, fixed)
