"""Hostile answers scored through a real task: each is contained and reported as a failed item.

Every answer below would pass the item's tests (``f(x) == x + 1``) if its attack worked, so a passed
item would mean the attack succeeded; the tests also check from outside that nothing was harmed.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import pytest
from hostile import listener, processes_with

from cycleqd.evaluation.sandbox import Sandbox, SandboxLimits
from cycleqd.evaluation.tasks import PythonCodeTask
from cycleqd.evaluation.tasks.common import TaskContext

LIMITS = SandboxLimits(wall_s=4, cpu_s=1, memory_mb=256, max_processes=16, max_file_mb=2)
TESTS = ["assert f(1) == 2", "assert f(-1) == 0"]


def _judge(answer: str, data) -> tuple:
    ctx = TaskContext(sandbox=Sandbox(LIMITS), max_new_tokens=64, workers=1)
    item = {"id": "inc", "prompt": "Write f(x) returning x + 1.", "tests": TESTS}
    # memoize off: every answer must really run, never be settled by a remembered verdict.
    task = PythonCodeTask(name="code", data=data([item]), context=ctx, memoize=False)
    start = time.monotonic()
    result = task.score_predictions({"inc": answer}, split="validation").items[0]
    return result, time.monotonic() - start


def _failed(result) -> None:
    assert not result.correct
    assert result.score == 0.0
    assert result.reason, "a failed item says why"


def test_infinite_loop(data) -> None:
    result, seconds = _judge("def f(x):\n    while True:\n        pass", data)
    _failed(result)
    assert "time" in result.reason.lower()
    assert seconds < 30


def test_fork_bomb(data) -> None:
    marker = f"bomb{secrets.token_hex(4)}"
    # Every child becomes a long sleeper whose command line carries the marker: the test sees them
    # while the bomb runs and checks from outside that none survives the judging.
    sleeper = ["import time; time.sleep(60)", marker]
    answer = (
        "import os, sys, time\n"
        f"SLEEPER = [sys.executable, '-c', *{sleeper!r}]\n"
        "def f(x):\n"
        "    while True:\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        "                os.execv(sys.executable, SLEEPER)\n"
        "        except OSError:\n"
        "            time.sleep(0.01)"
    )
    seen = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen[0] = max(seen[0], len(processes_with(marker)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result, _ = _judge(answer, data)
    finally:
        done.set()
        watcher.join(timeout=5)
    _failed(result)
    assert seen[0] > 0, "the bomb's processes were never seen: the check below would prove nothing"
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_memory_hog(data) -> None:
    answer = "def f(x):\n    hog = bytearray(4 * 1024**3)\n    return x + 1 + hog[0]"
    _failed(_judge(answer, data)[0])


def test_huge_file(data, tmp_path: Path) -> None:
    answer = (
        "def f(x):\n"
        "    with open('huge.bin', 'wb') as fh:\n"
        "        for _ in range(64):\n"
        "            fh.write(bytes(1024 * 1024))\n"
        "    return x + 1"
    )
    _failed(_judge(answer, data)[0])


def test_writing_outside_the_working_folder(data, victim: Path) -> None:
    answer = f"def f(x):\n    open({str(victim / 'new.txt')!r}, 'w').write('pwned')\n    return x + 1"
    _failed(_judge(answer, data)[0])
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]


def test_deleting_files_outside(data, victim: Path) -> None:
    answer = f"import os\ndef f(x):\n    os.remove({str(victim / 'precious.txt')!r})\n    return x + 1"
    _failed(_judge(answer, data)[0])
    assert (victim / "precious.txt").read_text() == "precious\n"


def test_reading_the_parents_environment(data, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"CYCLEQD_TEST_SECRET_{secrets.token_hex(4).upper()}"
    monkeypatch.setenv(name, "hunter2")
    answer = f"import os\ndef f(x):\n    return x + len(os.environ[{name!r}]) - 6"
    result, _ = _judge(answer, data)
    _failed(result)
    assert "KeyError" in result.reason


def test_opening_a_network_connection(data) -> None:
    server, accepted = listener()
    port = server.getsockname()[1]
    answer = (
        "import socket\n"
        "def f(x):\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
        "    return x + 1"
    )
    try:
        result, _ = _judge(answer, data)
        time.sleep(0.1)
    finally:
        server.close()
    _failed(result)
    assert accepted == []
