import json
import subprocess
import sys

import pytest

from cycleqd.qd import archive_metrics, best_per_task, pareto_front, set_metrics


class TestArchiveMetrics:
    def test_empty(self, empty_archive):
        m = archive_metrics(empty_archive)
        assert m == {
            "filled": 0,
            "cells": 16,
            "coverage": 0.0,
            "qd_score": 0.0,
            "best": None,
            "out_of_range": {"b": {"below": 0, "above": 0}, "c": {"below": 0, "above": 0}},
        }

    def test_one_elite(self, one_elite_archive):
        m = archive_metrics(one_elite_archive)
        assert (m["filled"], m["coverage"], m["qd_score"]) == (1, 1 / 16, 0.5)
        assert m["best"] == {"model": "m0", "score": 0.5}

    def test_full(self, full_archive):
        m = archive_metrics(full_archive)
        assert m["filled"] == m["cells"] == 16
        assert m["coverage"] == 1.0
        # Qualities 0.00, 0.01, ..., 0.15: sum 0.01 × (0 + 1 + ... + 15) = 1.2.
        assert m["qd_score"] == pytest.approx(1.2, abs=1e-12)
        assert m["best"] == {"model": "m33", "score": 0.15}
        json.dumps(m)  # JSON-ready

    def test_qd_score_drops_the_displaced_quality(self, one_elite_archive, cell_scores):
        one_elite_archive.add("y", cell_scores(1, 2, 0.75))
        one_elite_archive.add("z", cell_scores(0, 0, 0.125))
        assert archive_metrics(one_elite_archive)["qd_score"] == 0.875


class TestSetMetrics:
    def test_best_per_task(self, archive_set):
        archive_set.add("e1", {"a": 0.9, "b": 0.1, "c": 0.3})
        archive_set.add("e2", {"a": 0.2, "b": 0.8, "c": 0.4})
        assert best_per_task(archive_set) == {
            "a": {"model": "e1", "score": 0.9},
            "b": {"model": "e2", "score": 0.8},
            "c": {"model": "e2", "score": 0.4},
        }

    def test_best_per_task_of_empty_set(self, archive_set):
        assert best_per_task(archive_set) == {"a": None, "b": None, "c": None}

    def test_set_metrics(self, archive_set):
        archive_set.add("e1", {"a": 0.9, "b": 0.1, "c": 0.3})
        m = set_metrics(archive_set)
        assert list(m) == ["a", "b", "c"]
        assert all(v["filled"] == 1 for v in m.values())
        assert m["c"]["qd_score"] == 0.3


class TestParetoFront:
    def test_hand_example(self):
        scores = {
            "z-best-a": {"a": 0.9, "b": 0.1},
            "dominated": {"a": 0.5, "b": 0.5},
            "balanced": {"a": 0.6, "b": 0.6},
            "best-b": {"a": 0.2, "b": 0.9},
            "weakly-dominated": {"a": 0.6, "b": 0.55},
            "twin": {"a": 0.6, "b": 0.6},
        }
        assert pareto_front(scores) == ["balanced", "best-b", "twin", "z-best-a"]

    def test_single_and_empty(self):
        assert pareto_front({}) == []
        assert pareto_front({"m": {"a": 0.0}}) == ["m"]

    def test_explicit_tasks(self):
        scores = {"x": {"a": 0.9, "b": 0.1}, "y": {"a": 0.5, "b": 0.5}}
        assert pareto_front(scores, tasks=["a"]) == ["x"]

    def test_missing_task(self):
        with pytest.raises(ValueError, match=r"'y'.*\['b'\]"):
            pareto_front({"x": {"a": 0.9, "b": 0.1}, "y": {"a": 0.5}})


def test_qd_never_imports_torch():
    code = "import sys, cycleqd.qd; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
