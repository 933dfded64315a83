import json
import math

import numpy as np
import pytest

from cycleqd.qd import AddStatus, Archive, BinSpec, Elite

TASKS = ("a", "b", "c")


class TestConstruction:
    def test_empty_archive(self, empty_archive):
        assert len(empty_archive) == 0
        assert empty_archive.n_cells == 16
        assert empty_archive.dims == (4, 4)
        assert empty_archive.measure_tasks == ("b", "c")
        assert empty_archive.best() is None
        assert empty_archive.elites() == []
        assert empty_archive.out_of_range == {"b": {"below": 0, "above": 0}, "c": {"below": 0, "above": 0}}

    def test_two_tasks_give_a_one_dimensional_grid(self, specs):
        archive = Archive(task="b", tasks=["a", "b"], bin_specs=specs)
        assert archive.dims == (4,)
        assert archive.add("m", {"a": 0.9, "b": 0.3}).cell == (3,)

    def test_needs_two_tasks(self, specs):
        with pytest.raises(ValueError, match="at least 2 tasks"):
            Archive(task="a", tasks=["a"], bin_specs=specs)

    def test_task_must_be_listed(self, specs):
        with pytest.raises(ValueError, match="'z' is not one of the tasks"):
            Archive(task="z", tasks=TASKS, bin_specs=specs)

    def test_missing_spec_is_named(self, specs):
        del specs["c"]
        with pytest.raises(ValueError, match="needs a BinSpec for task 'c'"):
            Archive(task="a", tasks=TASKS, bin_specs=specs)

    def test_spec_under_the_wrong_key(self, specs):
        specs["c"] = specs["b"]
        with pytest.raises(ValueError, match="spec of task 'b'"):
            Archive(task="a", tasks=TASKS, bin_specs=specs)

    def test_string_tasks_rejected(self, specs):
        with pytest.raises(TypeError, match="single string"):
            Archive(task="a", tasks="abc", bin_specs=specs)

    def test_constructor_is_keyword_only(self, specs):
        with pytest.raises(TypeError):
            Archive("a", TASKS, specs)  # type: ignore[misc]


class TestAdd:
    def test_new_into_empty_cell(self, empty_archive, cell_scores):
        result = empty_archive.add("x", cell_scores(1, 2, 0.5))
        assert result.status is AddStatus.NEW
        assert result.added
        assert result.cell == (1, 2)
        assert result.quality == 0.5
        assert result.displaced is None
        assert result.incumbent_quality is None
        assert result.out_of_range == {"b": 0, "c": 0}
        assert len(empty_archive) == 1
        assert empty_archive.get((1, 2)) == Elite(model_id="x", scores=cell_scores(1, 2, 0.5))

    def test_strictly_better_replaces_and_reports_the_displaced(self, one_elite_archive, cell_scores):
        result = one_elite_archive.add("y", cell_scores(1, 2, 0.6))
        assert result.status is AddStatus.IMPROVED
        assert result.displaced == "m0"
        assert result.incumbent_quality == 0.5
        assert one_elite_archive.get((1, 2)).model_id == "y"
        assert "m0" not in one_elite_archive
        assert len(one_elite_archive) == 1

    def test_tie_keeps_the_incumbent(self, one_elite_archive, cell_scores):
        result = one_elite_archive.add("y", cell_scores(1, 2, 0.5))
        assert result.status is AddStatus.NOT_ADDED
        assert not result.added
        assert result.displaced is None
        assert result.incumbent_quality == 0.5
        assert one_elite_archive.get((1, 2)).model_id == "m0"

    def test_worse_is_not_added(self, one_elite_archive, cell_scores):
        assert one_elite_archive.add("y", cell_scores(1, 2, 0.4)).status is AddStatus.NOT_ADDED
        assert one_elite_archive.model_ids() == ["m0"]

    def test_other_cell_is_new(self, one_elite_archive, cell_scores):
        assert one_elite_archive.add("y", cell_scores(2, 1, 0.1)).status is AddStatus.NEW
        assert one_elite_archive.model_ids() == ["m0", "y"]

    def test_high_goes_to_the_last_bin(self, empty_archive):
        result = empty_archive.add("x", {"a": 0.5, "b": 1.0, "c": 0.0})
        assert result.cell == (3, 0)
        assert result.out_of_range == {"b": 0, "c": 0}

    def test_out_of_range_clips_to_edge_cells_and_is_counted(self):
        specs = {t: BinSpec(task=t, low=0.2, high=0.8, bins=3) for t in TASKS}
        archive = Archive(task="a", tasks=TASKS, bin_specs=specs)
        r1 = archive.add("x", {"a": 0.5, "b": 0.1, "c": 0.9})
        assert r1.cell == (0, 2)
        assert r1.out_of_range == {"b": -1, "c": 1}
        # Not added (tie) but still counted: the counters cover every offer.
        r2 = archive.add("y", {"a": 0.5, "b": 0.0, "c": 1.0})
        assert r2.status is AddStatus.NOT_ADDED
        assert r2.cell == (0, 2)
        assert r2.out_of_range == {"b": -1, "c": 1}
        r3 = archive.add("w", {"a": 0.5, "b": 0.85, "c": 0.5})
        assert (r3.cell, r3.out_of_range) == ((2, 1), {"b": 1, "c": 0})
        assert archive.out_of_range == {"b": {"below": 2, "above": 1}, "c": {"below": 0, "above": 2}}
        # The quality task is never binned, so its range does not matter.
        assert archive.add("z", {"a": 0.99, "b": 0.5, "c": 0.5}).out_of_range == {"b": 0, "c": 0}

    @pytest.mark.parametrize(
        ("scores", "error", "match"),
        [
            ({"a": float("nan"), "b": 0.1, "c": 0.1}, ValueError, r"task 'a' is nan"),
            ({"a": 0.1, "b": 1.5, "c": 0.1}, ValueError, r"task 'b' is 1\.5, outside \[0, 1\]"),
            ({"a": 0.1, "b": 0.1, "c": -0.01}, ValueError, r"task 'c' is -0\.01"),
            ({"a": 0.1, "b": math.inf, "c": 0.1}, ValueError, r"task 'b' is inf"),
            ({"a": 0.1, "b": 0.1}, ValueError, r"lack task\(s\) \['c'\]"),
            ({"a": 0.1, "b": "0.2", "c": 0.1}, TypeError, r"task 'b' must be a real number"),
            ({"a": True, "b": 0.2, "c": 0.1}, TypeError, r"task 'a' must be a real number"),
        ],
    )
    def test_bad_scores_are_rejected_with_the_task(self, empty_archive, scores, error, match):
        with pytest.raises(error, match=match):
            empty_archive.add("x", scores)
        assert len(empty_archive) == 0
        assert empty_archive.stats["offers"] == 0

    def test_extra_tasks_are_dropped(self, empty_archive, cell_scores):
        empty_archive.add("x", {**cell_scores(0, 0, 0.3), "extra": 7.0})
        assert empty_archive.elites()[0].scores == cell_scores(0, 0, 0.3)

    def test_numpy_scores_are_stored_as_floats(self, empty_archive):
        empty_archive.add("x", {"a": np.float32(0.5), "b": np.float64(0.2), "c": 0})
        scores = empty_archive.elites()[0].scores
        assert all(type(v) is float for v in scores.values())

    def test_bad_id(self, empty_archive, cell_scores):
        with pytest.raises(TypeError, match="model_id"):
            empty_archive.add("", cell_scores(0, 0, 0.3))

    def test_held_id_with_other_scores_is_refused(self, one_elite_archive, cell_scores):
        with pytest.raises(ValueError, match="new id"):
            one_elite_archive.add("m0", cell_scores(0, 0, 0.9))

    def test_held_id_with_same_scores_is_a_no_op(self, one_elite_archive, cell_scores):
        before = one_elite_archive.cells()
        assert one_elite_archive.add("m0", cell_scores(1, 2, 0.5)).status is AddStatus.NOT_ADDED
        assert one_elite_archive.cells() == before

    def test_stats(self, one_elite_archive, cell_scores):
        one_elite_archive.add("y", cell_scores(1, 2, 0.9))
        one_elite_archive.add("z", cell_scores(1, 2, 0.1))
        assert one_elite_archive.stats == {"offers": 3, "new": 1, "improved": 1, "not_added": 1}


class TestAccessors:
    def test_full_archive(self, full_archive):
        assert len(full_archive) == full_archive.n_cells == 16
        assert list(full_archive.cells()) == sorted(full_archive.cells())
        assert full_archive.model_ids()[:3] == ["m00", "m01", "m02"]
        assert full_archive.best().model_id == "m33"

    def test_elites_in_cell_order_whatever_the_insertion_order(self, specs, cell_scores):
        one = Archive(task="a", tasks=TASKS, bin_specs=specs)
        two = Archive(task="a", tasks=TASKS, bin_specs=specs)
        cells = [(3, 1), (0, 2), (2, 2)]
        for i, j in cells:
            one.add(f"m{i}{j}", cell_scores(i, j, 0.5))
        for i, j in reversed(cells):
            two.add(f"m{i}{j}", cell_scores(i, j, 0.5))
        assert one.model_ids() == two.model_ids() == ["m02", "m22", "m31"]

    def test_best_ties_go_to_the_earliest_placed(self, empty_archive, cell_scores):
        empty_archive.add("late-cell-first", cell_scores(3, 3, 0.7))
        empty_archive.add("early-cell-second", cell_scores(0, 0, 0.7))
        empty_archive.add("worse", cell_scores(1, 1, 0.6))
        assert empty_archive.best().model_id == "late-cell-first"

    def test_cell_of(self, empty_archive):
        assert empty_archive.cell_of({"b": 0.3, "c": 0.8}) == (1, 3)
        with pytest.raises(ValueError, match="'c'"):
            empty_archive.cell_of({"b": 0.3})

    def test_get_validates_the_cell(self, one_elite_archive):
        assert one_elite_archive.get((0, 0)) is None
        assert one_elite_archive.get([1, 2]).model_id == "m0"
        for bad in [(4, 0), (0,), (0, 0, 0), (-1, 0), (0.5, 1)]:
            with pytest.raises(ValueError, match="not a cell"):
                one_elite_archive.get(bad)

    def test_elites_are_copies(self, one_elite_archive):
        one_elite_archive.elites()[0].scores["a"] = 0.0
        assert one_elite_archive.get((1, 2)).scores["a"] == 0.5

    def test_quality_grid(self, one_elite_archive):
        grid = one_elite_archive.quality_grid()
        assert grid.shape == (4, 4)
        assert grid[1, 2] == 0.5
        assert np.isnan(grid).sum() == 15

    def test_contains_and_repr(self, one_elite_archive):
        assert "m0" in one_elite_archive
        assert "nope" not in one_elite_archive
        assert repr(one_elite_archive) == "Archive(task='a', filled=1/16)"


class TestSerialisation:
    def test_json_round_trip_is_exact(self, full_archive, cell_scores):
        full_archive.add("x", {"a": 0.99, "b": 0.1 + 0.2, "c": 1.0})  # displaces, and an inexact float
        full_archive.add("y", {"a": 0.0, "b": 0.0, "c": 0.0})
        data = json.loads(json.dumps(full_archive.to_dict()))
        back = Archive.from_dict(data)
        assert back == full_archive
        assert back.to_dict() == full_archive.to_dict()
        assert back.elites() == full_archive.elites()
        assert back.stats == full_archive.stats
        assert back.out_of_range == full_archive.out_of_range

    def test_round_trip_keeps_the_tie_break_of_best(self, empty_archive, cell_scores):
        empty_archive.add("first", cell_scores(3, 3, 0.7))
        empty_archive.add("second", cell_scores(0, 0, 0.7))
        back = Archive.from_dict(json.loads(json.dumps(empty_archive.to_dict())))
        assert back.best().model_id == "first"
        # The insertion counter survives too: a later tie still loses to both.
        back.add("third", cell_scores(1, 1, 0.7))
        assert back.best().model_id == "first"

    def test_round_trip_of_an_empty_archive_with_counters(self):
        specs = {t: BinSpec(task=t, low=0.5, high=0.6, bins=2) for t in TASKS}
        archive = Archive(task="b", tasks=TASKS, bin_specs=specs)
        archive.add("x", {"a": 0.9, "b": 0.5, "c": 0.1})
        archive.add("y", {"a": 0.9, "b": 0.6, "c": 0.1})
        back = Archive.from_dict(json.loads(json.dumps(archive.to_dict())))
        assert back == archive
        assert back.out_of_range == {"a": {"below": 0, "above": 2}, "c": {"below": 2, "above": 0}}

    def test_not_equal_after_a_change(self, one_elite_archive, cell_scores):
        back = Archive.from_dict(one_elite_archive.to_dict())
        back.add("y", cell_scores(0, 0, 0.1))
        assert back != one_elite_archive

    def test_tampered_cell_is_rejected(self, one_elite_archive):
        data = one_elite_archive.to_dict()
        data["elites"][0]["cell"] = [0, 0]
        with pytest.raises(ValueError, match="does not match"):
            Archive.from_dict(data)

    def test_missing_key_is_named(self, one_elite_archive):
        data = one_elite_archive.to_dict()
        del data["next_order"]
        with pytest.raises(ValueError, match="'next_order'"):
            Archive.from_dict(data)

    def test_wrong_format(self, one_elite_archive):
        data = one_elite_archive.to_dict()
        data["format"] = "other/9"
        with pytest.raises(ValueError, match="format"):
            Archive.from_dict(data)
