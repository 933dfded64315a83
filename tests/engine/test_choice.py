from __future__ import annotations

import pytest

from cycleqd.engine.choice import Candidate, choose, mean_score, top_by_validation
from cycleqd.engine.soup import greedy_ingredients


def test_top_by_validation_orders_by_average_and_keeps_ties_in_order() -> None:
    scores = {
        "b": {"x": 0.5, "y": 0.7},  # 0.6
        "a": {"x": 0.9, "y": 0.5},  # 0.7
        "c": {"x": 0.7, "y": 0.5},  # 0.6, tied with b, after it
        "d": {"x": 0.1, "y": 0.1},
    }
    assert top_by_validation(scores, 3) == ["a", "b", "c"]
    assert top_by_validation(scores, 10) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="at least 1"):
        top_by_validation(scores, 0)


def test_select_decides_and_validation_only_breaks_ties() -> None:
    cands = [
        Candidate("best-val", {"x": 0.95}, {"x": 0.70}),
        Candidate("best-select", {"x": 0.80}, {"x": 0.75}),
        Candidate("tied-select-lower-val", {"x": 0.79}, {"x": 0.75}),
    ]
    assert choose(cands, split="select").model_id == "best-select"
    assert choose(cands, split="validation").model_id == "best-val"
    # Equal on select and validation: the earlier candidate.
    twins = [Candidate("first", {"x": 0.8}, {"x": 0.7}), Candidate("second", {"x": 0.8}, {"x": 0.7})]
    assert choose(twins, split="select").model_id == "first"


def test_the_choice_is_never_made_on_test_and_needs_select_scores() -> None:
    cands = [Candidate("a", {"x": 0.5}, None)]
    with pytest.raises(ValueError, match="never on 'test'"):
        choose(cands, split="test")
    with pytest.raises(ValueError, match="no select scores"):
        choose(cands, split="select")
    with pytest.raises(ValueError, match="no candidates"):
        choose([], split="select")
    assert mean_score({}) == 0.0


def test_a_greedy_soup_keeps_each_addition_that_does_not_lower_its_score() -> None:
    # The soup's score is looked up by its members: b helps, c hurts, d ties with the soup of a and b.
    scores = {("a", "b"): 0.6, ("a", "b", "c"): 0.55, ("a", "b", "d"): 0.6}
    calls: list[list[str]] = []

    def score(members: list[str]) -> float:
        calls.append(members)
        return scores[tuple(members)]

    kept = greedy_ingredients(["a", "b", "c", "d"], first_score=0.5, score=score)
    assert kept == ["a", "b", "d"]
    assert calls == [["a", "b"], ["a", "b", "c"], ["a", "b", "d"]]
    # Nothing beats the first alone: the soup is the first model.
    assert greedy_ingredients(["a", "b"], first_score=0.7, score=score) == ["a"]
    with pytest.raises(ValueError, match="at least one candidate"):
        greedy_ingredients([], first_score=0.0, score=score)
