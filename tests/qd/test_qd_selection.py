import numpy as np
import pytest

from cycleqd.qd import (
    SELECTIONS,
    Archive,
    elite_sampling_probabilities,
    select_parents,
    selection_probabilities,
    uniform_probabilities,
)

TASKS = ("a", "b", "c")

# Three elites of the archive of task a (cells by b, c with 4 bins): E1 (0, 3), E2 (1, 2), E3 (3, 0).
E1 = {"a": 0.2, "b": 0.1, "c": 0.9}
E2 = {"a": 0.6, "b": 0.4, "c": 0.5}
E3 = {"a": 0.4, "b": 0.9, "c": 0.1}
# By hand, with α_lo = 0.5, α_hi = 0.8, factor = 0.5 + 0.3 n:
#   task a: min 0.2, max 0.6 → n = 0, 1, 0.5     → factors 0.5, 0.8, 0.65
#   task b: min 0.1, max 0.9 → n = 0, 0.375, 1   → factors 0.5, 0.6125, 0.8
#   task c: min 0.1, max 0.9 → n = 1, 0.5, 0     → factors 0.8, 0.65, 0.5
#   γ = 0.5·0.5·0.8 = 0.2, 0.8·0.6125·0.65 = 0.3185, 0.65·0.8·0.5 = 0.26; Σγ = 0.7785
EXPECTED = [0.2 / 0.7785, 0.3185 / 0.7785, 0.26 / 0.7785]  # ≈ 0.256904, 0.409120, 0.333976


@pytest.fixture
def three_elite_archive(empty_archive) -> Archive:
    empty_archive.add("E3", E3)
    empty_archive.add("E1", E1)
    empty_archive.add("E2", E2)
    return empty_archive


class TestProbabilities:
    def test_paper_formula_on_a_hand_example(self):
        scores = np.array([[0.2, 0.1, 0.9], [0.6, 0.4, 0.5], [0.4, 0.9, 0.1]])
        probs = elite_sampling_probabilities(scores)
        np.testing.assert_allclose(probs, EXPECTED, rtol=1e-12)
        np.testing.assert_allclose(probs, [0.256904, 0.409120, 0.333976], atol=1e-6)

    def test_archive_probabilities_follow_cell_order(self, three_elite_archive):
        ids, probs = selection_probabilities(three_elite_archive)
        assert ids == ["E1", "E2", "E3"]
        np.testing.assert_allclose(probs, EXPECTED, rtol=1e-12)

    def test_constant_task_counts_as_one_for_everyone(self):
        # Task 0 constant → n = 1, factor 0.8 for both (no 0/0); task 1: factors 0.5 and 0.8.
        # γ = 0.4, 0.64; Σ = 1.04. (A factor shared by every elite cancels out of P.)
        probs = elite_sampling_probabilities(np.array([[0.5, 0.2], [0.5, 0.6]]))
        np.testing.assert_allclose(probs, [0.4 / 1.04, 0.64 / 1.04], rtol=1e-12)

    def test_identical_elites_are_uniform(self):
        probs = elite_sampling_probabilities(np.full((4, 3), 0.3))
        np.testing.assert_array_equal(probs, [0.25] * 4)

    def test_other_alphas(self):
        # α_lo = 0.2, α_hi = 1.0: factors 0.2 + 0.8 n. Scores: elite 0 = (0, 1), elite 1 = (1, 0.5).
        # γ0 = 0.2 · 1.0 = 0.2; γ1 = 1.0 · 0.2 = 0.2 → equal.
        probs = elite_sampling_probabilities(
            np.array([[0.0, 1.0], [1.0, 0.5]]), alpha_low=0.2, alpha_high=1.0
        )
        np.testing.assert_allclose(probs, [0.5, 0.5])

    def test_single_elite(self):
        np.testing.assert_array_equal(elite_sampling_probabilities(np.array([[0.3, 0.4]])), [1.0])

    def test_equal_alphas_are_uniform(self):
        scores = np.array([[0.2, 0.1], [0.6, 0.4], [0.4, 0.9]])
        probs = elite_sampling_probabilities(scores, alpha_low=0.7, alpha_high=0.7)
        np.testing.assert_allclose(probs, [1 / 3] * 3)

    def test_uniform(self, three_elite_archive):
        ids, probs = selection_probabilities(three_elite_archive, method="uniform")
        assert ids == ["E1", "E2", "E3"]
        np.testing.assert_array_equal(probs, [1 / 3] * 3)
        np.testing.assert_array_equal(uniform_probabilities(np.zeros((4, 2))), [0.25] * 4)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"alpha_low": 0.0}, "alpha_low must be a finite number > 0"),
            ({"alpha_high": float("nan")}, "alpha_high must be a finite number"),
            ({"alpha_low": 0.9, "alpha_high": 0.8}, "at least alpha_low"),
        ],
    )
    def test_alpha_validation(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            elite_sampling_probabilities(np.array([[0.1, 0.2]]), **kwargs)

    @pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((0, 2)), np.array([[0.1, np.nan]])])
    def test_score_validation(self, bad):
        with pytest.raises(ValueError, match="scores must"):
            elite_sampling_probabilities(bad)

    def test_registry(self):
        assert SELECTIONS["elite"] is elite_sampling_probabilities
        assert SELECTIONS["uniform"] is uniform_probabilities


class TestSelectParents:
    def test_two_distinct_parents(self, three_elite_archive):
        rng = np.random.default_rng(0)
        for _ in range(200):
            parents = select_parents(three_elite_archive, rng=rng)
            assert len(parents) == 2
            assert len(set(parents)) == 2
            assert set(parents) <= {"E1", "E2", "E3"}

    def test_all_elites_when_n_equals_their_number(self, three_elite_archive):
        parents = select_parents(three_elite_archive, rng=np.random.default_rng(1), n=3)
        assert sorted(parents) == ["E1", "E2", "E3"]

    def test_same_seed_same_parents(self, three_elite_archive):
        a = [select_parents(three_elite_archive, rng=np.random.default_rng(s)) for s in range(20)]
        b = [select_parents(three_elite_archive, rng=np.random.default_rng(s)) for s in range(20)]
        assert a == b
        assert len({tuple(p) for p in a}) > 1  # the seed matters

    def test_insertion_order_does_not_matter(self, three_elite_archive, specs):
        other = Archive(task="a", tasks=TASKS, bin_specs=specs)
        for name, scores in (("E1", E1), ("E2", E2), ("E3", E3)):
            other.add(name, scores)
        for seed in range(10):
            assert select_parents(other, rng=np.random.default_rng(seed)) == select_parents(
                three_elite_archive, rng=np.random.default_rng(seed)
            )

    def test_draw_frequencies_follow_the_probabilities(self, three_elite_archive):
        rng = np.random.default_rng(123)
        draws = [select_parents(three_elite_archive, rng=rng, n=1)[0] for _ in range(2000)]
        freq = [draws.count(e) / len(draws) for e in ("E1", "E2", "E3")]
        np.testing.assert_allclose(freq, EXPECTED, atol=0.04)

    def test_uniform_frequencies(self, three_elite_archive):
        rng = np.random.default_rng(7)
        draws = [select_parents(three_elite_archive, rng=rng, n=1, method="uniform")[0] for _ in range(1500)]
        freq = [draws.count(e) / len(draws) for e in ("E1", "E2", "E3")]
        np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.04)

    def test_too_few_elites(self, one_elite_archive):
        with pytest.raises(ValueError, match=r"holds 1 elite\(s\) but 2 distinct parents"):
            select_parents(one_elite_archive, rng=np.random.default_rng(0))

    def test_empty_archive(self, empty_archive):
        with pytest.raises(ValueError, match="holds 0 elite"):
            select_parents(empty_archive, rng=np.random.default_rng(0), n=1)

    def test_unknown_method(self, three_elite_archive):
        with pytest.raises(ValueError, match=r"unknown selection method 'best'.*'elite'"):
            select_parents(three_elite_archive, rng=np.random.default_rng(0), method="best")

    def test_bad_n(self, three_elite_archive):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            select_parents(three_elite_archive, rng=np.random.default_rng(0), n=0)

    def test_needs_a_generator(self, three_elite_archive):
        with pytest.raises(TypeError, match="default_rng"):
            select_parents(three_elite_archive, rng=0)  # type: ignore[arg-type]
