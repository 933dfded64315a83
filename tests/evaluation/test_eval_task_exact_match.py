from __future__ import annotations

import pytest

from cycleqd.errors import ConfigError
from cycleqd.evaluation.backends import ScriptedBackend
from cycleqd.evaluation.tasks import ExactMatchTask

ITEMS = [
    {"id": 1, "prompt": "2+2=", "answer": "4"},
    {"id": 2, "prompt": "capital of France?", "answer": ["Paris", "paris, france"]},
    {"id": 3, "prompt": "3*3=", "answer": 9},
]


def test_right_wrong_and_aliases(ctx, data) -> None:
    task = ExactMatchTask(name="em", data=data(ITEMS), context=ctx)
    backend = ScriptedBackend({"2+2=": " 4 ", "capital of France?": "Paris", "3*3=": "6"})
    result = task.evaluate(backend, split="validation")
    by_id = {i.item_id: i for i in result.items}
    assert by_id["1"].correct
    assert by_id["2"].correct
    assert not by_id["3"].correct
    assert by_id["3"].score == 0.0
    assert by_id["3"].reason == "expected '9', got '6'"
    assert result.score == pytest.approx(2 / 3)
    assert by_id["1"].output == " 4 "


def test_normalisation_steps(ctx, data) -> None:
    items = [{"id": "a", "prompt": "q", "answer": "The Eiffel Tower"}]
    plain = ExactMatchTask(name="em", data=data(items), context=ctx)
    loose = ExactMatchTask(
        name="em",
        data=data(items),
        context=ctx,
        normalize=["lower", "remove_punctuation", "remove_articles", "collapse_whitespace", "strip"],
    )
    answer = {"a": "  the eiffel   TOWER! "}
    assert plain.score_predictions(answer, split="validation").score == 0.0
    assert loose.score_predictions(answer, split="validation").score == 1.0


def test_answer_pattern_and_malformed(ctx, data) -> None:
    task = ExactMatchTask(
        name="em", data=data(ITEMS[:1]), context=ctx, answer_pattern=r"Answer:\s*(\S+)", numeric=True
    )
    ok = task.score_predictions({"1": "Let me think. Answer: 4.0"}, split="validation")
    assert ok.score == 1.0
    bad = task.score_predictions({"1": "four, I guess"}, split="validation")
    assert bad.items[0].reason.startswith("malformed: no answer matching")


def test_contains_and_first_line(ctx, data) -> None:
    items = [{"id": "x", "prompt": "q", "answer": "42"}]
    contains = ExactMatchTask(name="em", data=data(items), context=ctx, match="contains")
    first = ExactMatchTask(name="em", data=data(items), context=ctx, normalize=["first_line"])
    assert contains.score_predictions({"x": "the answer is 42."}, split="validation").score == 1.0
    assert first.score_predictions({"x": "42\nand then rambling"}, split="validation").score == 1.0
    assert first.score_predictions({"x": "\n"}, split="validation").score == 0.0


def test_stop_strings_and_prompt_template(ctx, data) -> None:
    task = ExactMatchTask(
        name="em",
        data=data(ITEMS[:1]),
        context=ctx,
        prompt_template="Q: {prompt}\nA:",
        stop=["\n"],
        max_new_tokens=5,
    )
    backend = ScriptedBackend({"Q: 2+2=\nA:": "4\nQ: next question"})
    result = task.evaluate(backend, split="validation")
    assert result.items[0].correct
    assert result.items[0].output == "4"
    assert backend.calls == [["Q: 2+2=\nA:"]]


def test_system_prompt_makes_chat_messages(ctx, data) -> None:
    task = ExactMatchTask(name="em", data=data(ITEMS[:1]), context=ctx, system="Answer with a number.")
    backend = ScriptedBackend({"2+2=": "4"})
    assert task.evaluate(backend, split="validation").score == 1.0
    assert backend.calls[0][0] == [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "2+2="},
    ]


def test_missing_predictions_score_zero(ctx, data) -> None:
    task = ExactMatchTask(name="em", data=data(ITEMS), context=ctx)
    result = task.score_predictions({"1": "4"}, split="validation")
    assert [i.correct for i in result.items] == [True, False, False]
    assert result.items[1].reason == "no prediction for this item"


def test_bad_params_and_items_are_config_errors(ctx, data) -> None:
    with pytest.raises(ConfigError, match="normalise: unknown option"):
        ExactMatchTask(name="em", data=data(ITEMS), context=ctx, normalise=["strip"])
    with pytest.raises(ConfigError, match="answer_pattern"):
        ExactMatchTask(name="em", data=data(ITEMS), context=ctx, answer_pattern="(")
    with pytest.raises(ConfigError, match=r"item '7' \(validation\) is invalid: answer: Field required"):
        ExactMatchTask(name="em", data=data([{"id": 7, "prompt": "q"}]), context=ctx)
    with pytest.raises(ConfigError, match=r"prompt_template uses \{question\}"):
        ExactMatchTask(name="em", data=data(ITEMS), context=ctx, prompt_template="{question}")


def test_empty_split_is_an_error(ctx, data) -> None:
    task = ExactMatchTask(name="em", data=data(ITEMS), context=ctx)
    with pytest.raises(ConfigError, match="no items in split test"):
        task.evaluate(ScriptedBackend("4"), split="test")
