import json

import pytest

from cycleqd.qd import AddStatus, ArchiveSet, BinSpec


def same(x: float) -> dict[str, float]:
    return {"a": x, "b": x, "c": x}


class TestAddAndRefcount:
    def test_expert_goes_into_every_archive(self, archive_set):
        result = archive_set.add("e1", {"a": 0.1, "b": 0.5, "c": 0.9})
        assert list(result.results) == ["a", "b", "c"]
        assert all(r.status is AddStatus.NEW for r in result.results.values())
        assert result.added
        assert result.added_to == ["a", "b", "c"]
        assert result.released == []
        assert archive_set.refcount("e1") == 3
        # Cells: archive a by (b, c), archive b by (a, c), archive c by (a, b).
        assert result.results["a"].cell == (2, 3)
        assert result.results["b"].cell == (0, 3)
        assert result.results["c"].cell == (0, 2)

    def test_displaced_from_its_last_cell_is_released(self, archive_set):
        archive_set.add("x", same(0.1))
        result = archive_set.add("y", same(0.2))  # same cell (0, 0) everywhere, strictly better
        assert [r.displaced for r in result.results.values()] == ["x", "x", "x"]
        assert result.released == ["x"]
        assert archive_set.refcount("x") == 0
        assert archive_set.refcount("y") == 3
        assert "x" not in archive_set
        assert archive_set.model_ids() == ["y"]

    def test_displaced_but_still_referenced_is_not_released(self, archive_set):
        archive_set.add("y", same(0.2))
        # Archive c: cell (a, b) = (0, 0) with quality 0.9 > 0.2 displaces y; archives a, b: new cells.
        result = archive_set.add("z", {"a": 0.15, "b": 0.15, "c": 0.9})
        assert [r.status for r in result.results.values()] == [
            AddStatus.NEW,
            AddStatus.NEW,
            AddStatus.IMPROVED,
        ]
        assert result.results["c"].displaced == "y"
        assert result.released == []
        assert archive_set.refcounts() == {"y": 2, "z": 3}

    def test_released_over_several_offers(self, archive_set):
        archive_set.add("y", same(0.2))
        archive_set.add("z", {"a": 0.15, "b": 0.15, "c": 0.9})  # y loses archive c
        archive_set.add("u", {"a": 0.15, "b": 0.9, "c": 0.15})  # y loses archive b
        result = archive_set.add("v", {"a": 0.9, "b": 0.15, "c": 0.15})  # y loses archive a, its last
        assert result.released == ["y"]
        assert archive_set.refcount("y") == 0
        assert archive_set.model_ids() == ["u", "v", "z"]

    def test_child_that_no_archive_takes(self, archive_set):
        archive_set.add("y", same(0.2))
        result = archive_set.add("w", same(0.2))  # ties everywhere: incumbents stay
        assert not result.added
        assert result.added_to == []
        assert result.released == []  # the offered id is never listed
        assert archive_set.refcount("w") == 0
        assert "w" not in archive_set

    def test_several_released_at_once(self):
        # Two tasks: archive a is a 1-D grid over b, archive b one over a, a single bin each.
        specs = {t: BinSpec(task=t, low=0.0, high=1.0, bins=1) for t in ("a", "b")}
        s = ArchiveSet(tasks=["a", "b"], bin_specs=specs)
        s.add("p", {"a": 0.9, "b": 0.1})
        s.add("q", {"a": 0.1, "b": 0.9})
        assert s.refcounts() == {"p": 1, "q": 1}
        result = s.add("r", {"a": 0.95, "b": 0.95})
        assert result.released == ["p", "q"]
        assert s.refcounts() == {"r": 2}

    def test_invalid_offer_changes_nothing(self, archive_set):
        archive_set.add("x", same(0.1))
        before = archive_set.to_dict()
        with pytest.raises(ValueError, match="'c'"):
            archive_set.add("y", {"a": 0.9, "b": 0.9, "c": float("nan")})
        with pytest.raises(ValueError, match="new id"):
            archive_set.add("x", same(0.5))
        assert archive_set.to_dict() == before
        assert archive_set["a"].stats["offers"] == 1

    def test_elite_scores(self, archive_set):
        archive_set.add("y", same(0.2))
        archive_set.add("x", {"a": 0.15, "b": 0.15, "c": 0.9})
        assert archive_set.elite_scores() == {"x": {"a": 0.15, "b": 0.15, "c": 0.9}, "y": same(0.2)}


class TestShape:
    def test_getitem(self, archive_set):
        assert archive_set["b"].task == "b"
        assert archive_set["b"].measure_tasks == ("a", "c")
        assert list(archive_set) == ["a", "b", "c"]
        with pytest.raises(KeyError, match="no archive for task 'z'"):
            archive_set["z"]

    def test_needs_every_spec(self, specs):
        del specs["a"]
        with pytest.raises(ValueError, match="BinSpec for task 'a'"):
            ArchiveSet(tasks=["a", "b", "c"], bin_specs=specs)

    def test_needs_two_tasks(self, specs):
        with pytest.raises(ValueError, match="at least 2 tasks"):
            ArchiveSet(tasks=["a"], bin_specs=specs)

    def test_bin_specs(self, archive_set, specs):
        assert archive_set.bin_specs == specs


class TestSerialisation:
    def test_json_round_trip(self, archive_set):
        archive_set.add("y", same(0.2))
        archive_set.add("z", {"a": 0.15, "b": 0.15, "c": 0.9})
        archive_set.add("w", {"a": 0.7, "b": 0.1 + 0.2, "c": 0.9})
        back = ArchiveSet.from_dict(json.loads(json.dumps(archive_set.to_dict())))
        assert back == archive_set
        assert back.refcounts() == archive_set.refcounts() == {"w": 3, "y": 2, "z": 3}
        # Both continue the same way.
        r1, r2 = archive_set.add("q", same(0.24)), back.add("q", same(0.24))
        assert r1 == r2
        assert back == archive_set

    def test_inconsistent_scores_across_archives(self, archive_set):
        archive_set.add("y", same(0.2))
        data = archive_set.to_dict()
        data["archives"]["c"]["elites"][0]["scores"]["c"] = 0.21
        with pytest.raises(ValueError, match="different scores"):
            ArchiveSet.from_dict(data)

    def test_missing_archive(self, archive_set):
        data = archive_set.to_dict()
        del data["archives"]["b"]
        with pytest.raises(ValueError, match="archives for"):
            ArchiveSet.from_dict(data)
