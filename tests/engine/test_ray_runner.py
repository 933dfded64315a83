"""The Ray runner on a real local Ray cluster started by the run itself (2 workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from toyrun import CLI, cli, write_toy_config

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'cycleqd[ray]')")

pytestmark = [pytest.mark.ray, pytest.mark.slow]
GENERATIONS = 14


def _worker_pids(root: int) -> list[int]:
    """Pids of the Ray workers that descend from process ``root`` (this test's run, no other)."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    parent = {int(r[0]): int(r[1]) for r in rows}

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parent.get(pid, 0)
        return False

    return [int(r[0]) for r in rows if len(r) == 3 and "ray::CycleQDWorker" in r[2] and descends(int(r[0]))]


def _result(run: Path) -> dict:
    ck = json.loads((run / "checkpoint.json").read_text())
    return {"archives": ck["archives"], "registry": ck["registry"], "final": ck["final"]["test_scores"]}


def _check_consistent(run: Path) -> None:
    ck = json.loads((run / "checkpoint.json").read_text())
    assert ck["finished"]
    assert ck["generation"] == GENERATIONS
    registry = {r["id"]: r for r in ck["registry"]}
    held = {e["model_id"] for a in ck["archives"]["archives"].values() for e in a["elites"]}
    for model_id in held:
        assert registry[model_id]["status"] == "elite"
    children = [r for r in registry.values() if r["kind"] == "child"]
    assert sorted(r["generation"] for r in children) == list(range(GENERATIONS))
    for r in children:
        assert r["status"] != "failed", r["error"]
        if r["status"] == "elite":
            assert (run / "models" / r["id"] / "model.safetensors").is_file()
    assert {p.name for p in (run / "models").iterdir()} == {
        r["id"] for r in children if r["status"] == "elite"
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ray_reference")
    cfg = write_toy_config(folder, generations=GENERATIONS, runner={"kind": "ray", "workers": 2})
    proc = subprocess.run(
        [CLI, "run", str(cfg), "--out", str(folder / "run"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return folder / "run"


def test_two_workers_complete_a_consistent_run(reference: Path) -> None:
    _check_consistent(reference)
    lines = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert {ln["worker"] for ln in lines} == {"worker-0", "worker-1"}


def test_a_killed_worker_does_not_lose_the_run(tmp_path: Path, reference: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=GENERATIONS, runner={"kind": "ray", "workers": 2})
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [CLI, "run", str(cfg), "--out", str(run), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    killed = None
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            pids = _worker_pids(proc.pid)
            if pids:
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.01)
    assert killed is not None, "no worker was found to kill"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _check_consistent(run)
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert "worker-2" in {ln["worker"] for ln in lines}, "no replacement worker took a job"
    # Same worker count, same seed: the retried jobs give exactly the run that was never disturbed.
    assert _result(run) == _result(reference)


CHOICES = [
    {"id": f"q{i}", "prompt": f"Q:{a} or {b}? A:", "choices": [a, b], "answer": i % 2}
    for i, (a, b) in enumerate(
        [("red", "blue"), ("cat", "dog"), ("up", "down"), ("sun", "moon"), ("one", "two"), ("hot", "cold"),
         ("sea", "sky"), ("left", "right"), ("yes", "no"), ("old", "new"), ("big", "small"), ("tea", "milk")]
    )
]  # fmt: skip


def test_language_models_with_the_hf_backend_on_ray_workers(tmp_path: Path) -> None:
    # Tiny Llamas with a character tokenizer, scored by the Hugging Face backend inside the workers.
    import yaml

    from cycleqd.evaluation.chartokenizer import tiny_char_llama

    folders = {name: tiny_char_llama(tmp_path / name, seed=seed) for name, seed in
               (("base", 0), ("a", 1), ("b", 2))}  # fmt: skip
    for split, rows in (("validation", CHOICES[:8]), ("test", CHOICES[8:])):
        with (tmp_path / "choices.jsonl").open("a") as fh:
            fh.writelines(json.dumps({**r, "split": split}) + "\n" for r in rows)
    cfg = {
        "seed": 0,
        "generations": 4,
        "models": {"base": str(folders["base"]), "experts": {"a": str(folders["a"]), "b": str(folders["b"])}},
        "tasks": [
            {"name": "a", "kind": "choice", "data": "choices.jsonl"},
            {"name": "b", "kind": "choice", "data": "choices.jsonl", "params": {"normalize": "length"}},
        ],
        "evaluation": {"backend": "hf", "dtype": "float32", "batch_size": 8},
        "archive": {"bins": 4},
        "mutation": {"kind": "gaussian", "sigma": 0.05},
        "runner": {"kind": "ray", "workers": 2},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    cli("run", str(tmp_path / "run.yaml"), "--out", str(run), "--no-progress", timeout=400)
    ck = json.loads((run / "checkpoint.json").read_text())
    assert ck["finished"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {ln["worker"] for ln in lines} == {"worker-0", "worker-1"}
    children = [r for r in ck["registry"] if r["kind"] == "child"]
    assert len(children) == 4
    assert all(r["status"] != "failed" for r in children), [r["error"] for r in children]
    # What a worker built and scored is what the driver scores: re-evaluate through the command line
    # a child the workers made (or, if no archive kept one, the aggregate the driver made).
    kept = [r for r in children if r["status"] == "elite"]
    if kept:
        weights, expected = run / "models" / kept[0]["id"], kept[0]["scores"]["validation"]
    else:
        agg = ck["final"]["aggregate"]
        weights, expected = Path(agg["path"]), agg["validation_scores"]
    out = cli("eval", str(weights), "--config", str(tmp_path / "run.yaml"), "--split", "validation", "--json")
    assert json.loads(out.stdout)["scores"] == pytest.approx(expected)


def test_a_child_whose_worker_died_before_writing_it_is_rebuilt_on_another(tmp_path: Path) -> None:
    # Runner level, so the worker dies at a chosen moment: after it evaluated the child, before the
    # driver asked it to write the weights it kept.
    import torch

    from cycleqd.config import load_config
    from cycleqd.engine.assembly import build_child_builder
    from cycleqd.engine.children import Job
    from cycleqd.engine.runners.ray import RayRunner, WorkerSpec
    from cycleqd.weights import open_model

    cfg = load_config(write_toy_config(tmp_path, mutation={"kind": "gaussian", "sigma": 0.01}))
    experts = cfg.models.experts
    job = Job(
        generation=0,
        child_id="g000000",
        active_task="sine",
        parents=("sine", "product"),
        parent_paths=(str(experts["sine"]), str(experts["product"])),
        seed=11,
    )
    runner = RayRunner(WorkerSpec(config=cfg.model_dump(mode="json")), workers=2, start_timeout_s=120)
    try:
        runner.submit(job)
        outcome = runner.next_outcome()
        assert outcome.scores is not None
        assert outcome.worker in runner.worker_pids()
        os.kill(runner.worker_pids()[outcome.worker], signal.SIGKILL)
        runner.persist(outcome, tmp_path / "child")
        assert runner.restarts == 1
        assert outcome.worker not in runner.worker_pids()
    finally:
        runner.close()
    assert not ray.is_initialized()  # the runner started Ray, and stopped it
    base = open_model(cfg.models.base)
    expected, _, _, _ = build_child_builder(cfg, base, fingerprints={}, svd_root=None).build(job)
    written = open_model(tmp_path / "child")
    assert set(written) == set(expected)
    assert all(torch.equal(written[n], expected[n].to(written.dtype(n))) for n in expected)


def test_workers_the_cluster_cannot_place_are_a_clear_error(tmp_path: Path) -> None:
    from cycleqd.config import load_config
    from cycleqd.engine.runners.ray import RayRunner, WorkerSpec
    from cycleqd.errors import CycleQDError

    cfg = load_config(write_toy_config(tmp_path))
    spec = WorkerSpec(config=cfg.model_dump(mode="json"))
    with pytest.raises(CycleQDError, match=r"2 × \(1.0 CPU, 1.0 GPU\) and the cluster has \d+ CPU and 0 GPU"):
        RayRunner(spec, workers=2, gpus_per_worker=1.0, start_timeout_s=3)
    assert not ray.is_initialized()  # nothing left behind
