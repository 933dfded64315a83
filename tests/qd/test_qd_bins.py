import math

import numpy as np
import pytest

from cycleqd.qd import BinSpec, DegenerateRangeWarning, make_bin_specs, paper_ranges


class TestBinSpec:
    def test_edges_are_equal_width_and_exact_at_the_ends(self):
        spec = BinSpec(task="a", low=0.2, high=0.8, bins=3)
        edges = spec.edges()
        assert edges.shape == (4,)
        assert edges[0] == 0.2
        assert edges[-1] == 0.8
        np.testing.assert_allclose(np.diff(edges), [0.2, 0.2, 0.2])

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (0.0, (0, 0)),  # low itself: first bin
            (0.2499, (0, 0)),
            (0.25, (1, 0)),  # an inner edge opens the next bin
            (0.5, (2, 0)),
            (0.99, (3, 0)),
            (1.0, (3, 0)),  # high itself: last bin, not out of range
        ],
    )
    def test_index_inside(self, value, expected):
        assert BinSpec(task="a", low=0.0, high=1.0, bins=4).index(value) == expected

    def test_index_agrees_with_edges_on_every_edge(self):
        spec = BinSpec(task="a", low=0.1, high=0.7, bins=15)
        for i, e in enumerate(spec.edges()[:-1]):
            assert spec.index(float(e)) == (i, 0)
        assert spec.index(float(spec.edges()[-1])) == (14, 0)

    def test_out_of_range_goes_to_edge_bins_and_is_flagged(self):
        spec = BinSpec(task="a", low=0.2, high=0.8, bins=5)
        assert spec.index(0.1) == (0, -1)
        assert spec.index(0.9) == (4, 1)
        assert spec.index(-math.inf) == (0, -1)
        assert spec.index(math.inf) == (4, 1)

    def test_nan_is_an_error(self):
        with pytest.raises(ValueError, match="NaN"):
            BinSpec(task="a", low=0.0, high=1.0).index(float("nan"))

    def test_default_bins_is_the_papers_15(self):
        assert BinSpec(task="a", low=0.0, high=1.0).bins == 15

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"low": 0.5, "high": 0.5}, "low must be below high"),
            ({"low": 0.6, "high": 0.5}, "low must be below high"),
            ({"low": float("nan"), "high": 0.5}, "low must be a finite number"),
            ({"low": 0.0, "high": math.inf}, "high must be a finite number"),
            ({"low": 0.0, "high": 1.0, "bins": 0}, "bins must be an integer >= 1"),
            ({"low": 0.0, "high": 1.0, "bins": 2.5}, "bins must be an integer >= 1"),
        ],
    )
    def test_validation_says_what_to_fix(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            BinSpec(task="a", **kwargs)

    def test_dict_round_trip(self):
        spec = BinSpec(task="a", low=0.1 + 0.2, high=0.7, bins=7)
        assert BinSpec.from_dict(spec.to_dict()) == spec

    def test_from_dict_names_the_missing_key(self):
        with pytest.raises(ValueError, match="'bins'"):
            BinSpec.from_dict({"task": "a", "low": 0.0, "high": 1.0})


class TestPaperRanges:
    def test_hand_example(self):
        # a: 0.85 × 0.4 = 0.34, 1.15 × 0.6 = 0.69. b: 0.85 × 0.9 = 0.765, 1.15 × 0.95 = 1.0925 → 1.
        ranges = paper_ranges({"e1": {"a": 0.4, "b": 0.9}, "e2": {"a": 0.6, "b": 0.95}})
        assert list(ranges) == ["a", "b"]
        assert ranges["a"] == pytest.approx((0.34, 0.69))
        assert ranges["b"] == pytest.approx((0.765, 1.0))
        assert ranges["b"][1] == 1.0

    def test_custom_factors(self):
        ranges = paper_ranges({"e1": {"a": 0.4}, "e2": {"a": 0.6}}, low_factor=0.5, high_factor=1.5)
        assert ranges["a"] == pytest.approx((0.2, 0.9))

    def test_all_experts_at_zero_is_widened_with_a_warning(self):
        with pytest.warns(DegenerateRangeWarning, match="'c'"):
            ranges = paper_ranges({"e1": {"a": 0.4, "c": 0.0}, "e2": {"a": 0.6, "c": 0.0}})
        assert ranges["c"] == (0.0, 0.05)
        assert ranges["a"] == pytest.approx((0.34, 0.69))

    def test_equal_scores_with_unit_factors_is_widened_on_both_sides(self):
        with pytest.warns(DegenerateRangeWarning, match="'a'"):
            ranges = paper_ranges({"e1": {"a": 0.5}, "e2": {"a": 0.5}}, low_factor=1.0, high_factor=1.0)
        assert ranges["a"] == pytest.approx((0.45, 0.55))

    def test_all_experts_perfect_is_not_degenerate(self, recwarn):
        ranges = paper_ranges({"e1": {"a": 1.0}, "e2": {"a": 1.0}})
        assert ranges["a"] == pytest.approx((0.85, 1.0))
        assert not [w for w in recwarn if issubclass(w.category, DegenerateRangeWarning)]

    def test_missing_task_names_expert_and_task(self):
        with pytest.raises(ValueError, match=r"expert 'e2' has no score on task 'b'"):
            paper_ranges({"e1": {"a": 0.4, "b": 0.5}, "e2": {"a": 0.6}})

    def test_no_experts(self):
        with pytest.raises(ValueError, match="at least one expert"):
            paper_ranges({})

    def test_bad_score(self):
        with pytest.raises(ValueError, match=r"'e1'.*'a'.*1.5"):
            paper_ranges({"e1": {"a": 1.5}})

    def test_factors_validated(self):
        with pytest.raises(ValueError, match="high_factor"):
            paper_ranges({"e1": {"a": 0.5}}, low_factor=1.2, high_factor=1.1)


class TestMakeBinSpecs:
    EXPERTS = {"e1": {"a": 0.4, "b": 0.2}, "e2": {"a": 0.6, "b": 0.3}}  # noqa: RUF012

    def test_paper_rule_by_default(self):
        specs = make_bin_specs(["a", "b"], expert_scores=self.EXPERTS)
        assert list(specs) == ["a", "b"]
        assert (specs["a"].low, specs["a"].high) == pytest.approx((0.34, 0.69))
        assert specs["a"].bins == 15
        assert specs["b"].task == "b"

    def test_explicit_ranges_override_per_task(self):
        specs = make_bin_specs(["a", "b"], bins=5, ranges={"b": (0.0, 1.0)}, expert_scores=self.EXPERTS)
        assert (specs["b"].low, specs["b"].high, specs["b"].bins) == (0.0, 1.0, 5)
        assert (specs["a"].low, specs["a"].high) == pytest.approx((0.34, 0.69))

    def test_explicit_ranges_alone_need_no_experts(self):
        specs = make_bin_specs(["a", "b"], ranges={"a": (0.1, 0.2), "b": (0.3, 0.4)})
        assert specs["a"] == BinSpec(task="a", low=0.1, high=0.2)

    def test_task_without_range_or_experts(self):
        with pytest.raises(ValueError, match=r"no bin range for task\(s\) \['b'\]"):
            make_bin_specs(["a", "b"], ranges={"a": (0.1, 0.2)})

    def test_unknown_task_in_ranges(self):
        with pytest.raises(ValueError, match="unknown task"):
            make_bin_specs(["a", "b"], ranges={"z": (0.1, 0.2)}, expert_scores=self.EXPERTS)

    def test_malformed_range(self):
        with pytest.raises(ValueError, match="pair"):
            make_bin_specs(["a"], ranges={"a": (0.1, 0.2, 0.3)})

    def test_duplicate_tasks(self):
        with pytest.raises(ValueError, match="more than once"):
            make_bin_specs(["a", "a"], expert_scores=self.EXPERTS)
