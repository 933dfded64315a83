from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from toyrun import EXAMPLES, cli, write_toy_config

from cycleqd.config import load_config
from cycleqd.engine.loop import Engine
from cycleqd.engine.state import RunState
from cycleqd.qd import ArchiveSet
from cycleqd.weights import open_model


def _lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("toy_run")
    cfg = write_toy_config(folder, generations=30)
    run = folder / "run"
    cli("run", str(cfg), "--out", str(run), "--no-progress")
    return run


def test_archives_fill_and_qd_score_never_decreases(toy_run: Path) -> None:
    lines = _lines(toy_run)
    assert [ln["generation"] for ln in lines] == list(range(30))
    state = RunState.load(toy_run / "checkpoint.json")
    for task in state.tasks:
        assert len(state.archives[task]) > 3  # experts alone fill at most 3 cells
        qd = [state.initial_metrics[task]["qd_score"]] + [ln["metrics"][task]["qd_score"] for ln in lines]
        assert all(b >= a for a, b in itertools.pairwise(qd)), f"QD score of {task} decreased"
        assert qd[-1] > qd[0]


def test_cycling_order_and_parents_come_from_the_active_archive(toy_run: Path) -> None:
    lines = _lines(toy_run)
    state = RunState.load(toy_run / "checkpoint.json")
    assert [ln["active_task"] for ln in lines[:6]] == ["sine", "product", "abs", "sine", "product", "abs"]
    # Replay the run from the experts: the parents of generation g must be elites of archive
    # tasks[g mod 3] as it stood then, and the replayed archives must end as the checkpoint's.
    replay = ArchiveSet(tasks=state.tasks, bin_specs=state.archives.bin_specs)
    for task in state.tasks:
        replay.add(f"expert-{task}", state.registry[f"expert-{task}"].scores["validation"])
    for ln in lines:
        assert ln["active_task"] == state.tasks[ln["generation"] % 3]
        held = set(replay[ln["active_task"]].model_ids())
        assert set(ln["parents"]) <= held, f"generation {ln['generation']}"
        assert state.registry[ln["child"]].parents == ln["parents"]
        if ln["scores"] is not None:
            added = replay.add(ln["child"], ln["scores"])
            assert {t: r.status.value for t, r in added.results.items()} == {
                t: d["status"] for t, d in ln["archives"].items()
            }
    assert replay == state.archives


def test_registry_and_weights_on_disk_agree(toy_run: Path) -> None:
    state = RunState.load(toy_run / "checkpoint.json")
    held = set(state.archives.model_ids())
    on_disk = {p.name for p in (toy_run / "models").iterdir()}
    children = {r.id for r in state.registry if r.kind.value == "child"}
    assert on_disk == held & children
    for rec in state.registry:
        if rec.kind.value == "child":
            assert rec.status.value in {"elite", "released", "rejected"}
            assert (rec.status.value == "elite") == (rec.id in held)
            assert rec.crossover is not None
            assert rec.mutation["kind"] == "svd-expert"
            assert rec.mutation["expert"] == rec.active_task


def test_aggregate_is_written_and_evaluated(toy_run: Path) -> None:
    state = RunState.load(toy_run / "checkpoint.json")
    agg = state.final["aggregate"]
    weights = agg["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    # θ_agg = θ0 + Σ softmax(f/T)_k τ_{e_k}, checked tensor by tensor.
    base = open_model(state.registry["base"].path)
    elites = {}
    for task, model_id in agg["elites"].items():
        p = Path(state.registry[model_id].path)
        elites[task] = open_model(p if p.is_absolute() else toy_run / p)
    out = open_model(toy_run / "aggregate")
    for name in base:
        expected = base[name] + sum(weights[t] * (elites[t][name] - base[name]) for t in weights)
        assert torch.allclose(out[name], expected, atol=1e-6)
    assert set(agg["test_scores"]) == {"sine", "product", "abs"}
    for model_id in ["base", "expert-sine", "aggregate", state.final["best_average"]]:
        assert set(state.registry[model_id].scores["test"]) == {"sine", "product", "abs"}


def test_status_json(toy_run: Path) -> None:
    info = json.loads(cli("status", str(toy_run), "--json").stdout)
    assert info["generation"] == 30
    assert info["tasks"] == ["sine", "product", "abs"]
    for task in info["tasks"]:
        a = info["archives"][task]
        assert {"filled", "cells", "qd_score", "best"} <= set(a)
        assert a["cells"] == 100
        assert a["best"]["model"].startswith(("expert-", "g0"))
    assert info["aggregate"]["path"].endswith("aggregate")
    assert set(info["aggregate"]["test_scores"]) == {"sine", "product", "abs"}


def test_failing_and_nan_tasks_fail_the_child_and_the_run_goes_on(
    tmp_path: Path, flaky_tasks_root: Path
) -> None:
    # Calls 1-4 evaluate the base and the experts; the children of generations 1 and 3 misbehave.
    cfg = write_toy_config(
        tmp_path,
        generations=6,
        root=str(flaky_tasks_root),
        mutation={"kind": "gaussian", "sigma": 0.01},
    )
    raw = yaml.safe_load(cfg.read_text())
    raw["tasks"][1] = {
        "name": "product",
        "kind": "flaky_tasks:Flaky",
        "params": {"target": "product", "raise_on": [6], "nan_on": [8]},
    }
    cfg.write_text(yaml.safe_dump(raw))
    state = Engine.create(load_config(cfg), tmp_path / "run").run()
    recs = {r.generation: r for r in state.registry if r.kind.value == "child"}
    assert recs[1].status.value == "failed"
    assert "RuntimeError: simulated failure on call 6" in recs[1].error
    assert recs[3].status.value == "failed"
    assert "returned a score that is not a number: nan" in recs[3].error
    assert all(recs[g].status.value != "failed" for g in (0, 2, 4, 5))
    assert state.generation == 6
    assert state.finished
    lines = _lines(tmp_path / "run")
    assert lines[1]["status"] == "failed"
    assert "simulated failure" in lines[1]["error"]


def test_fixed_roles_ablation_never_cycles(tmp_path: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=5, cycle=False, mutation={"kind": "none"})
    Engine.create(load_config(cfg), tmp_path / "run").run()
    assert {ln["active_task"] for ln in _lines(tmp_path / "run")} == {"sine"}


def test_uniform_selection_and_svd_self(tmp_path: Path) -> None:
    cfg = write_toy_config(
        tmp_path, generations=4, selection={"method": "uniform"}, mutation={"kind": "svd-self"}
    )
    state = Engine.create(load_config(cfg), tmp_path / "run").run()
    kinds = {r.mutation["kind"] for r in state.registry if r.kind.value == "child"}
    assert kinds == {"svd-self"}


def test_a_systematic_failure_stops_the_run_resumably(tmp_path: Path, flaky_tasks_root: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=20, root=str(flaky_tasks_root), stop_after_failures=3)
    raw = yaml.safe_load(cfg.read_text())
    raw["tasks"][2] = {
        "name": "abs",
        "kind": "flaky_tasks:Flaky",
        "params": {"target": "abs", "raise_on": list(range(5, 100))},
    }
    cfg.write_text(yaml.safe_dump(raw))
    proc = cli("run", str(cfg), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert "the last 3 children all failed (generations 0-2)" in proc.stderr
    assert "RuntimeError: simulated failure on call 7" in proc.stderr
    assert "cycleqd resume" in proc.stderr
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["generation"] == 3


@pytest.mark.slow
def test_the_shipped_toy_example_runs_as_is(tmp_path: Path) -> None:
    # The README's quickest path, unmodified: relative paths resolve against the YAML's folder, so the
    # command works from any working directory.
    run = tmp_path / "toy"
    cli("run", str(EXAMPLES / "toy.yaml"), "--out", str(run), "--no-progress", cwd=tmp_path)
    info = json.loads(cli("status", str(run), "--json").stdout)
    assert info["generation"] == yaml.safe_load((EXAMPLES / "toy.yaml").read_text())["generations"]
    assert info["finished"] is True
    for task in ("sine", "product", "abs"):
        best = info["archives"][task]["best"]
        assert 0.0 <= best["score"] <= 1.0
        assert info["archives"][task]["filled"] >= 3  # the three experts at least
    agg = info["aggregate"]
    assert Path(agg["path"]).is_dir()
    assert set(agg["test_scores"]) == {"sine", "product", "abs"}
