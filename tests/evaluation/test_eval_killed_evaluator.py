"""A killed evaluator leaves nothing behind: no sandboxed process, no cgroup, no sandbox folder.

The answer below loops forever and starts a sleeper that escapes its process group (``setsid``), each
with a 60 s limit: only the evaluator enforced that limit before, so killing ``cycleqd eval`` left them
running with none. Now the launcher dies with its parent and the warden cleans up the rest, well
before the item's limit.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile import processes_with

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's clean-up is Linux's")

CYCLEQD = shutil.which("cycleqd", path=str(Path(sys.executable).parent)) or "cycleqd"


def _sandbox_cgroups() -> set[str]:
    """The sandbox cgroups below this process's own cgroups (v1 hierarchies and v2)."""
    found: set[str] = set()
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        roots = [Path("/sys/fs/cgroup")] if controllers == "" else []
        roots += [Path("/sys/fs/cgroup") / c for c in controllers.split(",") if c]
        for root in roots:
            folder = root / path.lstrip("/")
            if folder.is_dir():
                found.update(str(p) for p in folder.glob("cycleqd-sandbox-*"))
    return found


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _looper(marker: str) -> str:
    """Code that starts a sleeper escaping its process group (``setsid``), then loops forever."""
    return (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}])\n"
        "while True:\n"
        "    pass\n"
    )


def _looping_eval_project(folder: Path, marker: str, *, timeout_s: float, params: str = "{}") -> list[str]:
    """A ``cycleqd eval --predictions`` project whose one answer loops (with a sleeper); its argv."""
    answer = _looper(marker) + "def f(x):\n    return x + 1\n"
    item = {"id": "inc", "prompt": "f(x) = x + 1", "tests": ["assert f(1) == 2"], "split": "test"}
    (folder / "code.jsonl").write_text(json.dumps(item) + "\n")
    (folder / "run.yaml").write_text(
        f"tasks: [{{name: code, kind: python_code, data: code.jsonl, params: {params}}}]\n"
        f"evaluation: {{sandbox: {{timeout_s: {timeout_s}, cpu_s: 60}}}}\n"
    )
    (folder / "preds.jsonl").write_text(json.dumps({"task": "code", "id": "inc", "output": answer}) + "\n")
    return [CYCLEQD, "eval", "--predictions", "preds.jsonl", "--config", "run.yaml"]


def _kill_and_check(argv: list[str], *, cwd: Path, marker: str, sig: int, startup: float = 60) -> None:
    """Start ``argv``, wait for the sandboxed sleeper, send ``sig``, check that nothing is left."""
    temp = cwd / "tmp"
    temp.mkdir()
    before = _sandbox_cgroups()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, "TMPDIR": str(temp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_for(lambda: processes_with(marker), startup), "the answer never started its sleeper"
        assert list(temp.glob("cycleqd-sandbox-*")), "no sandbox folder seen: the check below proves nothing"
        during = _sandbox_cgroups() - before
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = time.monotonic()
    assert _wait_for(lambda: not processes_with(marker), 10), "the sandboxed sleeper outlived the evaluator"
    assert _wait_for(lambda: not list(temp.glob("cycleqd-sandbox-*")), 10), list(temp.iterdir())
    assert _wait_for(lambda: not (during & _sandbox_cgroups()), 10), during & _sandbox_cgroups()
    assert time.monotonic() - killed_at < 30, "cleaned up only at the item's limit"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_cycleqd_eval_during_a_looping_item_leaves_nothing(tmp_path: Path, sig: int) -> None:
    marker = f"escapee-{secrets.token_hex(4)}"
    argv = _looping_eval_project(tmp_path, marker, timeout_s=60)
    _kill_and_check(argv, cwd=tmp_path, marker=marker, sig=sig)


# A random model's one-line answer becomes a comment of a valid program, so every item reaches the
# sandbox (a syntax error would be judged without running anything).
PROGRAM_FROM_ANY_TEXT = {
    "answer_prefix": "def f(x):\n    return 0  # ",
    "extract": "raw",
    "stop": ["\n", "\r"],
    "max_new_tokens": 4,
}


@pytest.mark.slow
def test_sigkill_of_cycleqd_run_during_a_looping_item_leaves_nothing(tmp_path: Path) -> None:
    from cycleqd.evaluation.chartokenizer import tiny_char_llama

    marker = f"escapee-{secrets.token_hex(4)}"
    folders = {n: tiny_char_llama(tmp_path / n, seed=s) for n, s in (("base", 0), ("a", 1), ("b", 2))}
    # Whatever the models write, the item's setup (run in the sandbox before the answer) loops.
    rows = [
        {"id": f"q{i}", "prompt": "f(x) = x + 1", "setup": _looper(marker), "tests": ["assert f(1) == 2"]}
        | {"split": split}
        for i, split in enumerate(["validation", "test"])
    ]
    (tmp_path / "code.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "seed": 0,
        "generations": 5,
        "models": {"base": str(folders["base"]), "experts": {"a": str(folders["a"]), "b": str(folders["b"])}},
        "tasks": [
            {"name": t, "kind": "python_code", "data": "code.jsonl", "params": PROGRAM_FROM_ANY_TEXT}
            for t in ("a", "b")
        ],
        "evaluation": {"backend": "hf", "dtype": "float32", "sandbox": {"timeout_s": 60, "cpu_s": 60}},
        "archive": {"bins": 4},
        "mutation": {"kind": "gaussian", "sigma": 0.05},
    }
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))
    argv = [CYCLEQD, "run", "run.yaml", "--out", "run", "--no-progress"]
    _kill_and_check(argv, cwd=tmp_path, marker=marker, sig=signal.SIGKILL, startup=120)


def test_the_warden_cleans_up_what_a_dead_process_held_and_nothing_it_released(tmp_path: Path) -> None:
    marker = f"held-{secrets.token_hex(4)}"
    program = f"""
import os, subprocess, sys
from cycleqd.evaluation.sandbox.warden import warden
sleep = [sys.executable, "-c", "import time; time.sleep(300)", {marker!r}]
quiet = dict(start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
held = subprocess.Popen(sleep + ["held"], **quiet)
kept = subprocess.Popen(sleep + ["kept"], **quiet)
os.mkdir({str(tmp_path / "held")!r})
os.mkdir({str(tmp_path / "kept")!r})
warden().watch(pgid=held.pid, folder={str(tmp_path / "held")!r})
released = warden().watch(pgid=kept.pid, folder={str(tmp_path / "kept")!r})
warden().release(released)
print(warden().pid, flush=True)
os._exit(0)  # no clean-up of its own, as if killed
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    warden_pid = int(out.stdout)
    try:
        assert _wait_for(lambda: not Path(f"/proc/{warden_pid}").exists(), 10), "the warden did not exit"
        assert not (tmp_path / "held").exists()
        assert (tmp_path / "kept").exists(), "a released folder was removed"
        alive = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in processes_with(marker)]
        assert len(alive) == 1, alive
        assert alive[0].endswith(b"kept\x00"), alive
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_stopped_evaluator_does_not_set_its_program_free(tmp_path: Path) -> None:
    """With the evaluator stopped (SIGSTOP), the launcher's own deadline ends the looping program."""
    marker = f"escapee-{secrets.token_hex(4)}"
    argv = _looping_eval_project(tmp_path, marker, timeout_s=2, params="{check_batch: 1}")
    proc = subprocess.Popen(
        [*argv, "--json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert _wait_for(lambda: processes_with(marker), 60), "the answer never started its sleeper"
        proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        # The wall clock (2 s) plus the launcher's margin (5 s), then the namespace goes.
        gone = _wait_for(lambda: not processes_with(marker), 20)
        assert gone, "the program outlived its launcher's deadline"
        assert time.monotonic() - stopped_at > 1.0, "ended before its wall clock: the check proves nothing"
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert json.loads(out)["scores"] == {"code": 0.0}
