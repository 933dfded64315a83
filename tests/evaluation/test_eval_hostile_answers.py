"""Hostile answers scored through a real task: each is contained and reported as a failed item.

Every answer below would pass the item's tests (``f(x) == x + 1``) if its attack worked, so a passed
item would mean the attack succeeded; the tests also check from outside that nothing was harmed.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

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
    answer = (
        "import os, time\n"
        "def f(x):\n"
        f"    tag = {marker!r}\n"
        "    while True:\n"
        "        try:\n"
        "            os.fork()\n"
        "        except OSError:\n"
        "            time.sleep(0.01)"
    )
    result, _ = _judge(answer, data)
    _failed(result)
    time.sleep(0.2)
    leftovers = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        leftovers.append(entry.name)
            except OSError:
                continue
    assert leftovers == []


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
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
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
        stop.set()
        thread.join(timeout=2)
        server.close()
    _failed(result)
    assert accepted == []
