from __future__ import annotations

import pytest

from cycleqd.errors import ConfigError
from cycleqd.evaluation.backends import ScriptedBackend
from cycleqd.evaluation.tasks import ChoiceTask

ITEMS = [
    {"id": "sky", "prompt": "The sky is", "choices": ["blue", "a rather unusual green"], "answer": 0},
    {"id": "fire", "prompt": "Fire is", "choices": ["cold", "hot"], "answer": "hot"},
]


def _backend(preferred: dict[str, str], *, per_char: float = 0.0) -> ScriptedBackend:
    """Log-likelihood: 0 for the preferred option, -5 otherwise, minus ``per_char`` per character."""

    def ll(context, continuation: str) -> float:
        base = 0.0 if continuation.strip() == preferred[context] else -5.0
        return base - per_char * len(continuation)

    return ScriptedBackend("", loglikelihood=ll)


def test_right_and_wrong_choices(ctx, data) -> None:
    task = ChoiceTask(name="mc", data=data(ITEMS), context=ctx)
    result = task.evaluate(_backend({"The sky is": "blue", "Fire is": "cold"}), split="validation")
    sky, fire = result.items
    assert sky.correct
    assert sky.output == "blue"
    assert not fire.correct
    assert fire.output == "cold"
    assert fire.reason == "chose option 0 ('cold'); the answer is option 1"
    assert fire.detail["loglikelihoods"] == [pytest.approx(0.0), pytest.approx(-5.0)]
    assert result.score == 0.5


def test_length_normalisation_changes_the_pick(ctx, data) -> None:
    # Strong per-character penalty: summed, the short option wins; per character, the long one does.
    backend = _backend({"The sky is": "a rather unusual green", "Fire is": "hot"}, per_char=1.0)
    raw = ChoiceTask(name="mc", data=data(ITEMS[:1]), context=ctx)
    norm = ChoiceTask(name="mc", data=data(ITEMS[:1]), context=ctx, normalize="length")
    assert raw.evaluate(backend, split="validation").items[0].output == "blue"
    assert norm.evaluate(backend, split="validation").items[0].output == "a rather unusual green"


def test_choice_prefix_reaches_the_backend(ctx, data) -> None:
    seen = []

    def ll(context, continuation):
        seen.append(continuation)
        return 0.0

    task = ChoiceTask(name="mc", data=data(ITEMS[:1]), context=ctx, choice_prefix=" Answer: ")
    task.evaluate(ScriptedBackend("", loglikelihood=ll), split="validation")
    assert seen == [" Answer: blue", " Answer: a rather unusual green"]


def test_saved_predictions(ctx, data) -> None:
    task = ChoiceTask(name="mc", data=data(ITEMS), context=ctx)
    result = task.score_predictions({"sky": "blue", "fire": "lukewarm"}, split="validation")
    assert result.items[0].correct
    assert result.items[1].reason.startswith("malformed")
    by_index = task.score_predictions({"sky": 0, "fire": "1"}, split="validation")
    assert by_index.score == 1.0


def test_bad_answers_are_config_errors(ctx, data) -> None:
    with pytest.raises(ConfigError, match=r"answer index 5 is outside 0\.\.1"):
        ChoiceTask(
            name="mc", data=data([{"id": 1, "prompt": "p", "choices": ["a", "b"], "answer": 5}]), context=ctx
        )
    with pytest.raises(ConfigError, match="'c' is not one of the choices"):
        ChoiceTask(
            name="mc",
            data=data([{"id": 1, "prompt": "p", "choices": ["a", "b"], "answer": "c"}]),
            context=ctx,
        )
    with pytest.raises(ConfigError, match="choices"):
        ChoiceTask(
            name="mc", data=data([{"id": 1, "prompt": "p", "choices": ["a"], "answer": 0}]), context=ctx
        )


def test_teacher_pairs_are_the_prompt_and_the_option_the_task_would_pick(ctx, data) -> None:
    backend = _backend({"The sky is": "a rather unusual green", "Fire is": "hot"}, per_char=1.0)
    norm = ChoiceTask(name="mc", data=data(ITEMS), context=ctx, normalize="length", choice_prefix=" ")
    assert norm.can_teach
    assert norm.teacher_pairs(backend) == [("The sky is", " a rather unusual green"), ("Fire is", " hot")]
    assert norm.teacher_pairs(backend, limit=1) == [("The sky is", " a rather unusual green")]
