"""The end of a run: candidates by validation, the recommendation chosen on select, ``final/``, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from toyrun import cli, write_toy_config

from cycleqd.config import load_config
from cycleqd.engine.choice import mean_score
from cycleqd.engine.loop import Engine
from cycleqd.engine.state import RunState
from cycleqd.errors import ConfigError, CycleQDError
from cycleqd.weights import open_model


def _use_task(cfg: Path, kind: str, *, only: int | None = None) -> None:
    raw = yaml.safe_load(cfg.read_text())
    for i, task in enumerate(raw["tasks"]):
        if only is None or i == only:
            task["kind"] = kind
    cfg.write_text(yaml.safe_dump(raw))


def test_the_recommendation_is_the_best_candidate_on_select_and_never_reads_test(
    tmp_path: Path, flaky_tasks_root: Path
) -> None:
    cfg = write_toy_config(tmp_path, generations=24, root=str(flaky_tasks_root), final={"top_k": 5})
    _use_task(cfg, "select_tasks:ReversedTest")
    run = tmp_path / "run"
    cli("run", str(cfg), "--out", str(run), "--no-progress")
    state = RunState.load(run / "checkpoint.json")
    choice = json.loads((run / "choice.json").read_text())
    assert choice == state.final["recommended"]
    assert choice["split"] == "select"
    candidates = choice["candidates"]
    assert [c["model"] for c in candidates][-1] == "aggregate"
    # The 5 elites with the best validation averages, the soups of them, the aggregate.
    elites = {e.model_id: e.scores for t in state.tasks for e in state.archives[t].elites()}
    best5 = sorted(elites, key=lambda m: -mean_score(elites[m]))[:5]
    assert [c["model"] for c in candidates[:5]] == best5
    assert [c["model"] for c in candidates[5:-1]] == [
        s["offered_as"] for s in choice["soups"].values() if s["offered_as"]
    ]
    assert "soup-uniform" in [c["model"] for c in candidates]
    by_select = max(candidates, key=lambda c: mean_score(c["select"]))
    assert choice["model"] == by_select["model"]
    # Test scores are 1 − select here: a choice made on test would have taken the worst on select.
    tests = {
        m: mean_score(s)
        for m, s in state.final["test_scores"].items()
        if m in {c["model"] for c in candidates}
    }
    assert max(tests, key=tests.get) != choice["model"]
    assert tests[choice["model"]] == pytest.approx(1.0 - mean_score(by_select["select"]))
    # final/ holds the chosen model's weights.
    chosen, final = open_model(run / state.registry[choice["model"]].path), open_model(run / "final")
    assert all(chosen[n].equal(final[n]) for n in chosen)
    status = json.loads(cli("status", str(run), "--json").stdout)
    assert status["recommended"]["model"] == choice["model"]
    assert status["recommended"]["path"] == str((run / "final").resolve())
    assert "recommended" in cli("status", str(run)).stdout


def test_without_select_the_choice_is_on_validation_and_the_run_says_so(
    tmp_path: Path, flaky_tasks_root: Path
) -> None:
    cfg = write_toy_config(tmp_path, generations=6, root=str(flaky_tasks_root))
    _use_task(cfg, "select_tasks:WithoutSelect")
    run = tmp_path / "run"
    proc = cli("run", str(cfg), "--out", str(run), "--no-progress")
    state = RunState.load(run / "checkpoint.json")
    choice = state.final["recommended"]
    assert choice["split"] == "validation"
    assert all("select" not in c for c in choice["candidates"])
    best = max(choice["candidates"], key=lambda c: mean_score(c["validation"]))
    assert choice["model"] == best["model"]
    assert "is chosen on validation, the split that drove evolution" in " ".join(
        (proc.stdout + proc.stderr).split()
    )
    assert (run / "final").exists()


def test_a_select_split_on_some_tasks_only_is_refused_before_any_work(
    tmp_path: Path, flaky_tasks_root: Path
) -> None:
    cfg = write_toy_config(tmp_path, generations=2, root=str(flaky_tasks_root))
    _use_task(cfg, "select_tasks:WithoutSelect", only=1)
    with pytest.raises(CycleQDError, match=r"sine, abs have a select split but product not"):
        Engine.create(load_config(cfg), tmp_path / "run").run()
    run = tmp_path / "run"
    assert not (run / "checkpoint.json").exists()
    # Nothing of the run was written, so the corrected config can use the same folder.
    assert not (run / "config.yaml").exists()
    _use_task(cfg, "select_tasks:WithoutSelect")
    Engine.create(load_config(cfg), run)


def test_seed_merges_are_scored_offered_and_released_like_children(tmp_path: Path) -> None:
    merges = [
        {"method": "linear"},
        {"method": "task_arithmetic", "params": {"lambda": 0.5}},
        {"method": "task_arithmetic", "params": {"lambda": 1.0}},
    ]
    cfg = write_toy_config(tmp_path, generations=30, init={"merges": merges})
    run = tmp_path / "run"
    cli("run", str(cfg), "--out", str(run), "--no-progress")
    state = RunState.load(run / "checkpoint.json")
    seeds = [r for r in state.registry if r.kind.value == "seed"]
    assert [r.id for r in seeds] == ["seed-00", "seed-01", "seed-02"]
    assert [r.crossover for r in seeds] == [{"params": {}, **m} for m in merges]
    held = {m for t in state.tasks for m in state.archives[t].model_ids()}
    for rec in seeds:
        assert set(rec.scores["validation"]) == set(state.tasks)
        on_disk = (run / "models" / rec.id).exists()
        assert on_disk == (rec.id in held) == (rec.status.value == "elite")
    # The seeds were offered right after the experts, before generation 0: the initial archives
    # hold every seed that was better than an expert in some cell.
    assert any(r.status.value in ("elite", "released") for r in seeds)
    # Every seed kept on disk is its merge, checked by hand on one tensor: the average of the experts,
    # or θ0 + λ Σ τ_k.
    kept = [r for r in seeds if (run / "models" / r.id).exists()]
    assert kept
    base = open_model(state.registry["base"].path)
    experts = [open_model(state.registry[f"expert-{t}"].path) for t in state.tasks]
    name = next(iter(base))
    for rec in kept:
        spec = merges[int(rec.id.split("-")[1])]
        if spec["method"] == "linear":
            by_hand = sum(e[name] for e in experts) / len(experts)
        else:
            by_hand = base[name] + spec["params"]["lambda"] * sum(e[name] - base[name] for e in experts)
        assert open_model(run / rec.path)[name].allclose(by_hand, atol=1e-6), rec.id
    status = json.loads(cli("status", str(run), "--json").stdout)
    assert sum(status["seeds"].values()) == 3


def test_soups_of_the_best_elites_are_candidates_with_their_members_and_search_recorded(
    tmp_path: Path, flaky_tasks_root: Path
) -> None:
    cfg = write_toy_config(tmp_path, generations=24, root=str(flaky_tasks_root), final={"top_k": 4})
    _use_task(cfg, "select_tasks:ReversedTest")
    run = tmp_path / "run"
    cli("run", str(cfg), "--out", str(run), "--no-progress")
    state = RunState.load(run / "checkpoint.json")
    choice = json.loads((run / "choice.json").read_text())
    top = [c["model"] for c in choice["candidates"][:4]]
    uniform = choice["soups"]["uniform"]
    assert uniform == {"members": top, "offered_as": "soup-uniform"}
    # The uniform soup is θ0 + (1/4) Σ τ_i, by hand on every tensor.
    base = open_model(state.registry["base"].path)
    members = [open_model(run / state.registry[m].path) for m in top]
    soup = open_model(run / "soups" / "uniform")
    for name in base:
        by_hand = base[name] + sum(m[name] - base[name] for m in members) / 4
        assert soup[name].allclose(by_hand, atol=1e-6), name
    # The greedy search: each addition kept exactly when it did not lower the soup's score so far.
    greedy = choice["soups"]["greedy"]
    assert greedy["first"] == top[0]
    assert [t["added"] for t in greedy["trials"]] == top[1:]
    current = greedy["validation"]
    assert current == pytest.approx(mean_score(state.registry[top[0]].scores["validation"]))
    for t in greedy["trials"]:
        assert t["kept"] == (t["validation"] >= current)
        current = max(current, t["validation"]) if t["kept"] else current
    assert greedy["members"] == [top[0], *(t["added"] for t in greedy["trials"] if t["kept"])]
    offered = len(greedy["members"]) > 1 and set(greedy["members"]) != set(top)
    assert greedy["offered_as"] == ("soup-greedy" if offered else None)
    for soup_id in ("soup-uniform", "soup-greedy") if offered else ("soup-uniform",):
        rec = state.registry[soup_id]
        assert rec.kind.value == "soup"
        assert rec.scores.keys() >= {"validation", "select", "test"}
    assert not (run / "soups" / ".trial").exists()
    # Without soups, the candidates are the elites and the aggregate, and no soups/ folder is left.
    (tmp_path / "b").mkdir()
    cfg2 = write_toy_config(
        tmp_path / "b", generations=24, root=str(flaky_tasks_root), final={"top_k": 4, "soups": []}
    )
    _use_task(cfg2, "select_tasks:ReversedTest")
    cli("run", str(cfg2), "--out", str(tmp_path / "run2"), "--no-progress")
    choice2 = json.loads((tmp_path / "run2" / "choice.json").read_text())
    assert [c["model"] for c in choice2["candidates"]] == [*top, "aggregate"]
    assert choice2["soups"] == {}
    assert not (tmp_path / "run2" / "soups").exists()


def test_a_soup_named_twice_is_refused(tmp_path: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=2, final={"soups": ["greedy", "greedy"]})
    with pytest.raises(ConfigError, match="each soup may be named once"):
        load_config(cfg)
