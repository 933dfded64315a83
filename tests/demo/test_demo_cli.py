"""``cycleqd demo --quick`` end to end through the real command line, twice (the second from the cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cycleqd.demo.experiment import KINDS

CLI = str(Path(sys.executable).with_name("cycleqd"))
pytestmark = pytest.mark.slow


def _demo(out: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CYCLEQD_CACHE": str(cache)}
    return subprocess.run(
        [CLI, "demo", "--quick", "--out", str(out), "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("demo")
    cache = root / "cache"
    first = _demo(root / "first", cache)
    assert first.returncode == 0, first.stdout + first.stderr
    weights = sorted(cache.rglob("model.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in weights}
    second = _demo(root / "second", cache, "--ablations")
    assert second.returncode == 0, second.stdout + second.stderr
    return {"root": root, "cache": cache, "first": first, "second": second, "stamps": stamps}


def test_results_json_schema(runs) -> None:
    rows = json.loads((runs["root"] / "first" / "results.json").read_text())
    assert {r["kind"] for r in rows} == set(KINDS) - {"ablation"}
    for r in rows:
        assert set(r) >= {
            "name",
            "kind",
            "test",
            "average",
            "seed",
            "validation",
            "select",
            "chosen",
            "final",
        }
        assert set(r["test"]) == {"code", "db", "os"}
        assert r["average"] == pytest.approx(sum(r["test"].values()) / 3)
        assert all(0.0 <= v <= 1.0 for v in r["test"].values())
        if r["kind"] != "cycleqd" or r["chosen"]:  # every chosen model was chosen with select scores
            assert set(r["select"]) == {"code", "db", "os"}
    # One recommended model per preset; the seed's final one is the recommendation best on select.
    recommended = [r for r in rows if r["chosen"]]
    assert [r["name"] for r in recommended] == ["cycleqd-paper", "cycleqd-offplane"]
    finals = [r for r in rows if r["final"]]
    assert len(finals) == 1
    assert finals[0] == max(recommended, key=lambda r: (r["select_average"], r["validation_average"]))
    names = [r["name"] for r in rows]
    expected = ["base", "expert-code", "expert-db", "expert-os", "average", "task-arithmetic"]
    expected += ["task-arithmetic-per-expert", "ties", "fine-tune-all", "cycleqd-paper", "cycleqd-offplane"]
    expected += ["cycleqd-paper-aggregate", "cycleqd-offplane-aggregate"]
    assert set(expected) <= set(names)
    assert next(r for r in rows if r["name"] == "fine-tune-all")["kind"] == "reference"


def test_report_plots_and_timings(runs) -> None:
    out = runs["root"] / "first"
    report = (out / "report.md").read_text()
    for heading in ("## The claim", "## Results of seed 0", "## CycleQD run of seed 0", "## Time"):
        assert heading in report
    for name in ("archives.png", "qd_score.png", "best_scores.png", "test_averages.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}" in report
    summary = json.loads((out / "demo" / "summary.json").read_text())
    assert summary["finished"] is True
    assert summary["timings"]["total"] > 0
    assert "total time:" in runs["first"].stdout
    # The baselines were chosen by the select rule: the best on select among the top settings.
    for r in json.loads((out / "results.json").read_text()):
        if r["kind"] == "baseline" and r["params"]["settings_tried"] > 1:
            assert r["select_average"] is not None


def test_the_console_shows_only_cycleqds_own_lines(runs) -> None:
    # The first run trains and saves models, the second loads them: neither lets transformers' bars
    # (saving or loading) or Python warnings through.
    for run in (runs["first"], runs["second"]):
        console = run.stdout + run.stderr
        for noise in ("Writing model shards", "Loading weights", "it/s]", "Warning:", "warnings.warn"):
            assert noise not in console, f"{noise!r} on the demo's console:\n{console}"


def test_second_run_reuses_the_cached_models(runs) -> None:
    assert "first run: models trained" in runs["first"].stdout
    assert "cached run: models loaded from the cache" in runs["second"].stdout
    first = json.loads((runs["root"] / "first" / "demo" / "summary.json").read_text())
    second = json.loads((runs["root"] / "second" / "demo" / "summary.json").read_text())
    assert first["seeds"][0]["models_trained"] is True
    assert second["seeds"][0]["models_trained"] is False
    assert first["seeds"][0]["models_folder"] == second["seeds"][0]["models_folder"]
    stamps = runs["stamps"]
    assert stamps
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained or rewritten
    # Same recipe, same seed: the same models and therefore the same scores of base and experts.
    rows = [json.loads((runs["root"] / n / "results.json").read_text()) for n in ("first", "second")]
    pick = [{r["name"]: r["test"] for r in rs if r["kind"] in ("base", "expert")} for rs in rows]
    assert pick[0] == pick[1]


def test_status_and_report_understand_the_demo_folder(runs) -> None:
    out = runs["root"] / "second"
    status = _cli("status", str(out), "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["finished"] is True
    assert set(info["archives"]) == {"code", "db", "os"}
    (out / "report.md").unlink()
    report = _cli("report", str(out))
    assert report.returncode == 0, report.stderr
    assert "## The claim" in (out / "report.md").read_text()


def test_a_used_folder_is_refused_before_any_work(runs) -> None:
    again = _demo(runs["root"] / "first", runs["cache"])
    assert again.returncode == 2
    assert "is not an empty folder" in again.stderr


def test_ablations_run_with_the_same_budget_and_seed(runs) -> None:
    out = runs["root"] / "second"
    rows = json.loads((out / "results.json").read_text())
    ablations = {r["name"]: r for r in rows if r["kind"] == "ablation"}
    assert set(ablations) == {"fixed-roles", "no-mutation", "gaussian-mutation", "uniform-selection"}
    assert not any(r["final"] for r in ablations.values())
    for name, change in (("fixed-roles", {"cycle": False}), ("no-mutation", {"mutation": {"kind": "none"}})):
        assert ablations[name]["params"]["change"] == change
        run = out / "demo" / "seed0" / "ablations" / name
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 3  # the quick variant's generations, as the main run
        if name == "fixed-roles":
            assert {ln["active_task"] for ln in lines} == {"code"}
        else:
            assert [ln["active_task"] for ln in lines] == ["code", "db", "os"]
            assert all(ln["mutation"]["kind"] == "none" for ln in lines)
    assert "## Ablations" in (out / "report.md").read_text()
