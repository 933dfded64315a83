"""A stand-in for a model that answers from a script: fixed or computed text instead of generation.

Useful to test tasks and checkers (right, wrong, malformed or hostile answers), to demonstrate a task
without a model, and to drive multi-round agent episodes with scripted turns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from cycleqd.evaluation.backends.prompting import cut_at_stop, last_user_text
from cycleqd.evaluation.base import InMemoryBackend, Prompt


class ScriptedBackend(InMemoryBackend):
    """Answers prompts from a script.

    Args:
        respond: A function prompt → text; a mapping from the prompt's text (a plain prompt, or the
            last user message of a conversation) to text, unknown prompts getting ``default``; or one
            text for every prompt.
        loglikelihood: A function (context, continuation) → log-likelihood, for ``choice`` tasks.
        default: Answer of a mapping script for prompts it does not hold.

    Attributes:
        calls: The prompts of each ``generate`` call, in order (for tests).
        loads: Fingerprints passed to :meth:`load`, in order.
    """

    def __init__(
        self,
        respond: Callable[[Prompt], str] | Mapping[str, str] | str,
        *,
        loglikelihood: Callable[[Prompt, str], float] | None = None,
        default: str = "",
    ) -> None:
        super().__init__()
        self._respond = respond
        self._ll = loglikelihood
        self._default = default
        self.calls: list[list[Prompt]] = []
        self.loads: list[str] = []

    def load(self, weights: Mapping[str, torch.Tensor], *, fingerprint: str) -> None:  # noqa: D102
        super().load(weights, fingerprint=fingerprint)
        self.loads.append(fingerprint)

    def answer(self, prompt: Prompt) -> str:
        """The scripted answer to one prompt (before stop strings)."""
        if callable(self._respond):
            return self._respond(prompt)
        if isinstance(self._respond, str):
            return self._respond
        return self._respond.get(last_user_text(prompt), self._default)

    def generate(  # noqa: D102
        self, prompts: Sequence[Prompt], *, max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        self.calls.append(list(prompts))
        return [cut_at_stop(self.answer(p), stop) for p in prompts]

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:  # noqa: D102
        if self._ll is None:
            raise NotImplementedError("this scripted backend was given no loglikelihood function")
        return [float(self._ll(ctx, cont)) for ctx, cont in requests]
