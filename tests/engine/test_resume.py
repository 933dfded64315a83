from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from toyrun import CLI, cli, write_toy_config

GENERATIONS = 24


def _final(run: Path) -> dict:
    ck = json.loads((run / "checkpoint.json").read_text())
    return {
        "archives": ck["archives"],
        "registry": ck["registry"],
        "generation": ck["generation"],
        "final": {k: v for k, v in ck["final"].items() if k != "aggregate"},
        "aggregate_scores": ck["final"]["aggregate"]["test_scores"],
        "models": sorted(p.name for p in (run / "models").iterdir()),
    }


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for ln in lines:
        ln.pop("time")
        ln.pop("seconds")
    return lines


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reference")
    cfg = write_toy_config(folder, generations=GENERATIONS)
    cli("run", str(cfg), "--out", str(folder / "run"), "--no-progress")
    return folder / "run"


def _kill_when(run: Path, cfg: Path, *, after_lines: int, extra_delay: float) -> None:
    proc = subprocess.Popen(
        [CLI, "run", str(cfg), "--out", str(run), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= after_lines:
            break
        time.sleep(0.005)
    time.sleep(extra_delay)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("trial", [0, 1])
def test_sigkill_at_a_random_generation_then_resume_is_identical(
    tmp_path: Path, reference: Path, trial: int
) -> None:
    rng = random.Random()
    # A toy generation takes milliseconds: kill in the first half so that the run is still evolving
    # (or, at worst, aggregating) when the signal lands.
    after = rng.randint(1, GENERATIONS // 2)
    delay = rng.uniform(0.0, 0.05)
    cfg = write_toy_config(tmp_path, generations=GENERATIONS)
    run = tmp_path / "run"
    _kill_when(run, cfg, after_lines=after, extra_delay=delay)
    ck = json.loads((run / "checkpoint.json").read_text())
    assert not ck.get("finished"), "killed too late to test anything"
    cli("resume", str(run), "--no-progress")
    assert _final(run) == _final(reference), f"killed after {after} lines + {delay:.3f}s"
    assert _metrics(run) == _metrics(reference)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after-persist", "after-metrics", "after-checkpoint", "after-aggregate"])
def test_crash_at_each_write_then_resume_is_identical(tmp_path: Path, reference: Path, point: str) -> None:
    if point == "after-persist":  # a generation whose child an archive took
        ck = json.loads((reference / "checkpoint.json").read_text())
        generation = min(
            r["generation"]
            for r in ck["registry"]
            if r["kind"] == "child" and r["generation"] >= 5 and r["status"] in {"elite", "released"}
        )
    else:
        generation = GENERATIONS if point == "after-aggregate" else 7
    cfg = write_toy_config(tmp_path, generations=GENERATIONS)
    run = tmp_path / "run"
    env = {**os.environ, "CYCLEQD_CRASH_AT": f"{point}:{generation}"}
    proc = subprocess.run(
        [CLI, "run", str(cfg), "--out", str(run), "--no-progress"], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    cli("resume", str(run), "--no-progress")
    assert _final(run) == _final(reference)
    assert _metrics(run) == _metrics(reference)


@pytest.mark.slow
def test_extending_a_finished_run_equals_running_longer(tmp_path: Path, reference: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=10)
    run = tmp_path / "run"
    cli("run", str(cfg), "--out", str(run), "--no-progress")
    assert json.loads((run / "checkpoint.json").read_text())["finished"]
    proc = cli("resume", str(run), "--generations", "5", check=False)
    assert proc.returncode == 2
    assert "has already made 10 generations" in proc.stderr
    cli("resume", str(run), "--generations", str(GENERATIONS), "--no-progress")
    assert _final(run) == _final(reference)


def test_resume_of_a_finished_run_changes_nothing(reference: Path) -> None:
    before = (reference / "checkpoint.json").read_text()
    cli("resume", str(reference), "--no-progress")
    assert (reference / "checkpoint.json").read_text() == before


def test_a_resume_refused_for_the_lock_leaves_the_config_as_it_was(reference: Path) -> None:
    before = (reference / "config.yaml").read_bytes()
    with open(reference / ".lock", "w") as held:  # another process working on the run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = cli("resume", str(reference), "--generations", str(GENERATIONS + 6), check=False)
    assert proc.returncode == 2
    assert "another process" in proc.stderr
    assert (reference / "config.yaml").read_bytes() == before
    # A plain resume afterwards finds the run finished at its own length, not extended.
    cli("resume", str(reference), "--no-progress")
    assert json.loads((reference / "checkpoint.json").read_text())["generation"] == GENERATIONS


def test_run_refuses_a_file_as_its_folder(tmp_path: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=2)
    target = tmp_path / "taken"
    target.write_text("a file")
    proc = cli("run", str(cfg), "--out", str(target), check=False)
    assert proc.returncode == 2
    assert "is a file, not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert target.read_text() == "a file"


def test_run_refuses_an_existing_run_folder(reference: Path, tmp_path: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=2)
    proc = cli("run", str(cfg), "--out", str(reference), check=False)
    assert proc.returncode == 2
    assert "already holds a run" in proc.stderr
    assert "cycleqd resume" in proc.stderr


def test_damaged_elite_weights_stop_the_resume_with_a_clear_error(tmp_path: Path) -> None:
    cfg = write_toy_config(tmp_path, generations=6)
    run = tmp_path / "run"
    env = {**os.environ, "CYCLEQD_CRASH_AT": "after-checkpoint:4"}
    proc = subprocess.run([CLI, "run", str(cfg), "--out", str(run), "--no-progress"], env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    elite = sorted((run / "models").iterdir())[0]
    (elite / "model.safetensors").write_bytes(b"\0" * 10)  # what a power loss can leave
    proc = cli("resume", str(run), check=False)
    assert proc.returncode == 2
    assert f"the weights of 1 elite(s) in {run / 'models'} are missing or damaged" in proc.stderr
    assert elite.name in proc.stderr


def _can_mount_tmpfs(folder: Path) -> bool:
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {folder}"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_a_message_and_resume_finishes_it_identically(
    tmp_path: Path, reference: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a small tmpfs here (needs root or user namespaces)")
    cfg = write_toy_config(tmp_path, generations=GENERATIONS)
    run = disk / "run"
    # In a private mount namespace: a 400 KB file system that fills during evolution, then more room.
    script = (
        f"mount -t tmpfs -o size=400k tmpfs {disk}\n"
        f"rc=0; {CLI} run {cfg} --out {run} --no-progress 2> {tmp_path / 'err.txt'} || rc=$?\n"
        f"echo $rc > {tmp_path / 'rc.txt'}\n"
        f"cp {run / 'checkpoint.json'} {tmp_path / 'stopped.json'}\n"
        f"mount -o remount,size=20m {disk}\n"
        f"{CLI} resume {run} --no-progress > /dev/null\n"
        f"cp -a {run} {tmp_path / 'run'}\n"
    )
    subprocess.run(["unshare", "-m", "sh", "-ec", script], check=True, timeout=300)
    err = (tmp_path / "err.txt").read_text()
    assert (tmp_path / "rc.txt").read_text().strip() == "2", err
    assert f"the disk is full (writing {run}" in err
    assert f"then continue with `cycleqd resume {run}`" in err
    assert "Traceback" not in err
    assert not json.loads((tmp_path / "stopped.json").read_text()).get("finished"), "it did not stop early"
    assert _final(tmp_path / "run") == _final(reference)
    assert _metrics(tmp_path / "run") == _metrics(reference)


def test_resume_of_a_missing_folder_says_it_does_not_exist(tmp_path: Path) -> None:
    proc = cli("resume", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope'} does not exist; give the folder of a run" in proc.stderr
    assert not (tmp_path / "nope").exists()
