"""Batched checks of Python and shell answers give, item by item, the verdicts of one sandbox per answer.

Each list below mixes ordinary answers with hostile ones (runaway loops, fork bombs, huge allocations and
files, writes outside the folder, processes left running, fake verdicts, attempts at the supervisor and at
what other answers left in files, ``/tmp``, IPC or memory). Every list is judged twice, once with
``check_batch=1`` (a sandbox per answer, as before batches) and once in batches, and the verdicts must be
equal; the tests also check from outside that nothing was harmed and nothing was left running.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from batches import children_of, verdicts
from hostile import processes_with

from cycleqd.errors import ConfigError
from cycleqd.evaluation.sandbox import Sandbox, SandboxLimits
from cycleqd.evaluation.sandbox.batch import SandboxJob, batch_unavailable, run_batch
from cycleqd.evaluation.tasks import PythonCodeTask, ShellTask
from cycleqd.evaluation.tasks.checks import chunks
from cycleqd.evaluation.tasks.common import TaskContext

# 1 s of CPU stops runaway loops whatever the load; the wall clock is far off, so that a busy machine
# cannot turn a CPU limit into a timeout in one of the two runs only. Tests of the wall clock itself
# use WALL.
LIMITS = SandboxLimits(wall_s=15, cpu_s=1, memory_mb=256, max_processes=16, max_file_mb=2)
WALL = LIMITS.replace(wall_s=3)
CODE_ITEM = {"id": "inc", "prompt": "f(x) = x + 1", "tests": ["assert f(1) == 2", "assert f(-1) == 0"]}
SHELL_ITEM = {"id": "sort", "instruction": "sort", "files": {"a.txt": "b\na\n"}, "reference": "sort a.txt"}
# Built so that no answer's own text holds it: found in memory, it can only come from another answer.
MARKER = "ALPHA_" + "SECRET_" + "4242"


def _hidden(text: str) -> str:
    """A regex matching ``text`` whose own text does not match (its second character in a class)."""
    return re.escape(text[0]) + "[" + re.escape(text[1]) + "]" + re.escape(text[2:])


def _base64_forms(text: str) -> list[str]:
    """What ``text`` looks like inside base64, at each of the three alignments."""
    forms = []
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + text.encode()).decode()
        forms.append(encoded[(pad * 4 + 2) // 3 + 1 : -4])
    return forms


# An answer that scans its own memory for another answer's code (as it was sent, in base64) or output.
_PATTERN = "|".join(_hidden(t) for t in [MARKER, *_base64_forms(MARKER)])
MEMORY_SCAN = (
    "import re\n"
    f"PATTERN = re.compile({_PATTERN.encode()!r})\n"
    "def f(x):\n"
    "    found = False\n"
    "    with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb') as mem:\n"
    "        for line in maps:\n"
    "            span, perms = line.split()[:2]\n"
    "            if 'r' not in perms:\n"
    "                continue\n"
    "            start, end = (int(v, 16) for v in span.split('-'))\n"
    "            try:\n"
    "                mem.seek(start)\n"
    "                chunk = mem.read(end - start)\n"
    "            except (OSError, ValueError, OverflowError):\n"
    "                continue\n"
    "            found = found or PATTERN.search(chunk) is not None\n"
    "    return x + 1 if found else x\n"
)
# Long, with the marker at its end and in its output: what a later answer would find of it, if anything.
MARKED = "# " + "-" * 4000 + f"\n{MARKER} = 1\nprint({MARKER!r} * 50)\ndef f(x):\n    return x + 1"


class CountingSandbox(Sandbox):
    """A sandbox that counts the sandboxed runs it starts (a batch is one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs = 0
        self.probe()
        self.runs = 0

    def _launch(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.runs += 1
        return super()._launch(*args, **kwargs)


def _sandbox(tmp_path: Path, *, limits: SandboxLimits = LIMITS, **kwargs: Any) -> CountingSandbox:
    folder = tmp_path / "sandboxes"
    folder.mkdir(exist_ok=True)
    return CountingSandbox(limits, base_dir=folder, **kwargs)


def _code_task(sandbox: Sandbox, data, size: int) -> PythonCodeTask:
    ctx = TaskContext(sandbox=sandbox, max_new_tokens=64, workers=1)
    # memoize off: every answer must really run.
    return PythonCodeTask(name="code", data=data([CODE_ITEM]), context=ctx, memoize=False, check_batch=size)


def _shell_task(sandbox: Sandbox, data, size: int) -> ShellTask:
    ctx = TaskContext(sandbox=sandbox, max_new_tokens=64, workers=1)
    task = ShellTask(name="os", data=data([SHELL_ITEM]), context=ctx, memoize=False, check_batch=size)
    task.prepare("validation")
    return task


def _both_ways(make, answers: list[str]) -> tuple[list, list, int]:
    """Verdicts one sandbox per answer, then in one batch, and the sandboxed runs the batch took."""
    alone_task, batch_task = make(1), make(len(answers))
    item = alone_task.items("validation")[0]
    alone = alone_task.judge_all([(item, a) for a in answers])
    sandbox = batch_task.context.sandbox
    before = sandbox.runs
    together = batch_task.judge_all([(item, a) for a in answers])
    return verdicts(alone), verdicts(together), sandbox.runs - before


def _clean_afterwards(sandbox: Sandbox, marker: str | None = None) -> None:
    time.sleep(0.2)
    if marker is not None:
        assert processes_with(marker) == []
    assert list(sandbox.base_dir.iterdir()) == []


# -- Python ---------------------------------------------------------------------------------------------
def _python_answers(victim: Path) -> list[str]:
    return [
        "def f(x):\n    return x + 1",
        "def f(x):\n    return x",
        "def f(x) return x",  # settled without a sandbox
        "def f(x):\n    return x + 1\nraise ValueError('boom')",
        # Another answer's text, in its code and its output: the next answer must not find it anywhere.
        MARKED,
        MEMORY_SCAN,
        # Files left for the next answer, in /tmp, HOME and every folder it can reach.
        "import os\n"
        "for p in ('/tmp/planted', os.path.expanduser('~/planted'), '../planted', '../../planted'):\n"
        "    try:\n"
        "        open(p, 'w').write('def f(x): return x + 1')\n"
        "    except OSError:\n"
        "        pass\n"
        "def f(x):\n    return x",
        "import os\n"
        "def f(x):\n"
        "    for p in ('/tmp/planted', os.path.expanduser('~/planted'), '../planted', '../../planted'):\n"
        "        if os.path.exists(p):\n"
        "            return x + 1\n"
        "    return x",
        # A process left running, trying to rewrite whatever solutions come next.
        "import os, time\n"
        "def f(x):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        for _ in range(100):\n"
        "            for k in range(40):\n"
        "                try:\n"
        "                    open(f'../../{k}/work/solution.py', 'w').write('def f(x): return x + 1')\n"
        "                except OSError:\n"
        "                    pass\n"
        "            time.sleep(0.02)\n"
        "        os._exit(0)\n"
        "    return x",
        "def f(x):\n    return x",  # the answer the process above would like to turn into a pass
        # At the supervisor: signals, its files, its memory.
        "import os, signal\n"
        "def f(x):\n"
        "    for s in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM, signal.SIGINT):\n"
        "        try:\n"
        "            os.kill(1, s)\n"
        "        except OSError:\n"
        "            pass\n"
        "    for p in ('/proc/1/fd/0', '/proc/1/fd/1', '/proc/1/environ', '/proc/1/mem', '/proc/1/maps'):\n"
        "        try:\n"
        "            open(p, 'rb').read(1)\n"
        "            return x + 1\n"
        "        except OSError:\n"
        "            pass\n"
        "    return x",
        "def f(x):\n    return x + 1",  # still judged, after the attempt on the supervisor
        # A fake verdict line (no token).
        "import json\nprint('\\n' + '0' * 32 + json.dumps({'status': 'pass'}))\ndef f(x):\n    return x",
        # The token and the harness's reporting function, found by introspection: it reports values,
        # never a pass, so this fails with batches as without.
        "import os, sys\n"
        "def f(x):\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None:\n"
        "        if 'report' in frame.f_locals and 'token' in frame.f_locals:\n"
        "            frame.f_locals['report']({'status': 'pass'})\n"
        "            os._exit(0)\n"
        "        frame = frame.f_back\n"
        "    return x",
        # What a fresh interpreter has: site-packages, exit(), SystemExit, os._exit.
        "import yaml\ndef f(x):\n    return yaml.safe_load(str(x)) + 1",
        "exit()\ndef f(x):\n    return x + 1",
        "import sys\nsys.exit(3)",
        "import os\nos._exit(0)",
        "import atexit\natexit.register(lambda: print('\\n' + '0' * 32 + '{\"status\": \"pass\"}'))\n"
        "def f(x):\n    return x",
        # Limits: memory, file size, output, writes outside (CPU and processes: below).
        "def f(x):\n    hog = bytearray(4 * 1024**3)\n    return x + 1 + hog[0]",
        "def f(x):\n"
        "    with open('huge.bin', 'wb') as fh:\n"
        "        for _ in range(64):\n"
        "            fh.write(bytes(1024 * 1024))\n"
        "    return x + 1",
        "import sys\nsys.stdout.write('x' * (2 * 1024 * 1024))\ndef f(x):\n    return x + 1",
        f"def f(x):\n    open({str(victim / 'new.txt')!r}, 'w').write('pwned')\n    return x + 1",
        f"import os\ndef f(x):\n    os.remove({str(victim / 'precious.txt')!r})\n    return x + 1",
        "def f(x):\n    return x + 1",
        # Names the sandbox's own modules have: the path a fresh interpreter has finds none of them.
        "import tree\ndef f(x):\n    return x + 1",
        "import sys\ndef f(x):\n    return x + 1 - len({'supervisor', 'launcher'} & set(sys.modules))",
    ]


def test_python_batches_give_the_verdicts_of_single_runs(tmp_path, data, victim) -> None:
    sandbox = _sandbox(tmp_path)
    answers = _python_answers(victim)
    alone, together, runs = _both_ways(lambda size: _code_task(sandbox, data, size), answers)
    assert together == alone
    assert runs == 1  # every answer but the syntax error in one sandboxed run
    assert [v[0] for v in alone].count(True) >= 5  # ordinary answers pass: the comparison means something
    assert alone[0][0]
    assert not alone[1][0]
    assert not alone[5][0], "an answer found another answer's text in its memory"
    assert not alone[7][0]
    assert not alone[9][0]
    assert alone[11][0]
    assert not alone[13][0]  # the introspection cheat, the same both ways
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert (victim / "precious.txt").read_text() == "precious\n"
    _clean_afterwards(sandbox)


@pytest.mark.slow
def test_python_answers_at_the_cpu_and_process_limits(tmp_path, data) -> None:
    marker = f"cqd{secrets.token_hex(4)}"
    bomb = (
        "import os, sys, time\n"
        f"SLEEPER = [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}]\n"
        "def f(x):\n"
        "    for _ in range(200):\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        "                os.execv(sys.executable, SLEEPER)\n"
        "        except OSError:\n"
        "            time.sleep(0.002)\n"
        "    return x + 1"
    )
    right = "def f(x):\n    return x + 1"
    answers = [right, "def f(x):\n    while True:\n        pass", right, bomb, right, bomb, right]
    sandbox = _sandbox(tmp_path)
    alone, together, runs = _both_ways(lambda size: _code_task(sandbox, data, size), answers)
    assert together == alone
    assert runs == 1
    assert [v[0] for v in alone] == [True, False, True, True, True, True, True]
    assert alone[1][2] == "CPU time limit exceeded"
    _clean_afterwards(sandbox, marker)


def test_answers_find_nothing_of_the_answers_before_them_in_memory(tmp_path, data) -> None:
    # Output buffers small enough to come from the heap, where freed memory keeps its bytes unless the
    # supervisor zeroes them.
    sandbox = _sandbox(tmp_path, limits=LIMITS.replace(max_output_kb=64))
    answers = [MARKED, MEMORY_SCAN, MARKED, MARKED, MEMORY_SCAN]
    alone, together, runs = _both_ways(lambda size: _code_task(sandbox, data, size), answers)
    assert together == alone
    assert runs == 1
    assert [v[0] for v in together] == [True, False, True, True, False]
    # The scan finds the marker where it is: in its own process.
    own = f"M = ''.join({list(MARKER)!r})\n" + MEMORY_SCAN
    assert verdicts(_code_task(sandbox, data, 1).judge_all([(_item(data), own)]))[0][0]


def test_programs_find_nothing_of_the_programs_before_them_in_memory(tmp_path) -> None:
    # Where freed memory lies depends on sizes: a few shapes of batch, so that some would leave another
    # program's bytes where the next one looks, were the supervisor not to zero them.
    sandbox = _sandbox(tmp_path, limits=LIMITS.replace(max_output_kb=64))
    scan = MEMORY_SCAN + "print('found' if f(0) == 1 else 'nothing')\n"
    for pad, stdin, files in ((4000, "", False), (4000, "x\n{}", True), (20000, "", False), (300, "", True)):

        def job(code: str, stdin: str = stdin, files: bool = files) -> SandboxJob:
            argv = (sandbox.python, "-I", "../support/main.py")
            work = {"solution.py": code} if files else {}
            return SandboxJob(argv=argv, files=work, support_files={"main.py": code}, stdin=stdin, warm=True)

        marked = MARKED.replace("-" * 4000, "-" * pad)
        got = run_batch(sandbox, [job(marked), job(scan), job(marked), job(marked), job(scan)])
        seen = [g.result.stdout.strip()[-7:] if g else None for g in got]
        assert seen == ["ET_4242", "nothing", "ET_4242", "ET_4242", "nothing"], (pad, stdin, files)
    own = SandboxJob(
        argv=(sandbox.python, "-I", "../support/main.py"),
        support_files={"main.py": f"M = ''.join({list(MARKER)!r})\n" + scan},
        warm=True,
    )
    assert [g.result.stdout.strip() if g else None for g in run_batch(sandbox, [own, own])] == ["found"] * 2


@pytest.mark.slow
def test_python_answers_that_run_out_of_wall_time(tmp_path, data) -> None:
    answers = [
        "def f(x):\n    return x + 1",
        "import time\ndef f(x):\n    time.sleep(60)",
        "def f(x):\n    return x",
        # Passes, then leaves a thread that keeps the interpreter alive until the wall clock.
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "def f(x):\n    return x + 1",
        "def f(x):\n    return x + 1",
    ]
    sandbox = _sandbox(tmp_path, limits=WALL)
    alone, together, runs = _both_ways(lambda size: _code_task(sandbox, data, size), answers)
    assert together == alone
    assert runs == 1
    assert [v[0] for v in alone] == [True, False, False, True, True]
    assert "timed out" in (alone[1][2] or "")
    _clean_afterwards(sandbox)


# -- shell ------------------------------------------------------------------------------------------------
def _shell_answers(victim: Path) -> list[str]:
    return [
        "sort a.txt",
        "cat a.txt",
        "sort a.txt; touch x",
        "",  # malformed, settled without a sandbox
        "sort a.txt; exit 3",
        # Left for the next command: files in /tmp and HOME, an IPC message queue.
        "echo secret > /tmp/planted; echo secret > ~/planted; echo secret > ../planted 2>/dev/null;"
        " ipcmk -Q >/dev/null; sort a.txt",
        "cat /tmp/planted ~/planted ../planted 2>/dev/null || sort a.txt",
        "test \"$(ipcs -q | grep -c '^0x')\" = 0 && sort a.txt",
        # Processes left running, trying to change the next commands' folders.
        # (It waits first: its own folder is judged once the command ends, which is nondeterministic.)
        '(sleep 0.5; for i in $(seq 200); do for d in ../../*/work; do echo b > "$d/a.txt"; done 2>/dev/null;'
        " sleep 0.01; done) & sort a.txt",
        "sort a.txt",
        # At the supervisor.
        "kill -9 1; kill -STOP 1; cat /proc/1/environ /proc/1/maps 2>/dev/null; sort a.txt",
        # What the folder holds afterwards, read with the evaluating process's privileges.
        "sort a.txt; chmod 000 a.txt",
        "sort a.txt; mkdir -p d/e; echo x > d/e/f; chmod 0 d",
        "sort a.txt; mkfifo p; ln -s /etc/passwd l",
        # Limits (CPU and processes: below).
        "head -c 64M /dev/zero > big; sort a.txt",
        "yes | head -c 3000000; sort a.txt",
        f"echo pwned > {victim / 'new.txt'}; rm -f {victim / 'precious.txt'}; sort a.txt",
        "sort a.txt",
    ]


def test_shell_batches_give_the_verdicts_of_single_runs(tmp_path, data, victim) -> None:
    sandbox = _sandbox(tmp_path)
    answers = _shell_answers(victim)
    alone, together, runs = _both_ways(lambda size: _shell_task(sandbox, data, size), answers)
    assert together == alone
    assert runs == 1
    assert [v[0] for v in alone][:3] == [True, False, False]
    assert [alone[i][0] for i in (6, 7, 9, -1)] == [True] * 4  # nothing reached them
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    _clean_afterwards(sandbox)


@pytest.mark.slow
def test_shell_commands_at_the_cpu_and_process_limits(tmp_path, data) -> None:
    bomb = "bomb() { bomb | bomb & }; bomb"  # the commands after it must find their processes back
    answers = ["sort a.txt", "while :; do :; done", "sort a.txt", bomb, "sort a.txt", bomb, "sort a.txt"]
    sandbox = _sandbox(tmp_path)
    alone, together, runs = _both_ways(lambda size: _shell_task(sandbox, data, size), answers)
    assert together == alone
    assert runs == 1
    assert [v[0] for v in alone] == [True, False, True, False, True, False, True]
    _clean_afterwards(sandbox)


@pytest.mark.slow
def test_shell_commands_that_run_out_of_wall_time(tmp_path, data) -> None:
    answers = ["sort a.txt", "sleep 60", "sleep 60 & sort a.txt", "cat a.txt", "sort a.txt"]
    sandbox = _sandbox(tmp_path, limits=WALL)
    alone, together, runs = _both_ways(lambda size: _shell_task(sandbox, data, size), answers)
    assert together == alone
    assert runs == 1
    assert [v[0] for v in alone] == [True, False, True, False, True]
    _clean_afterwards(sandbox)


# -- the batch machinery ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_batch_whose_supervisor_dies_leaves_the_rest_to_single_runs(tmp_path, data) -> None:
    answers = [
        "def f(x):\n    return x + 1",
        "import time\ndef f(x):\n    time.sleep(1.5)\n    return x + 1",
        "def f(x):\n    return x",
        "def f(x):\n    return x + 1",
    ]
    sandbox = _sandbox(tmp_path)
    expected = verdicts(_code_task(sandbox, data, 1).judge_all([(_item(data), a) for a in answers]))
    killed: list[int] = []

    def kill_the_supervisor() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not killed:
            for launcher in children_of(os.getpid()):
                if not _is_batch(launcher):
                    continue
                for supervisor in children_of(launcher):
                    os.kill(supervisor, signal.SIGKILL)
                    killed.append(supervisor)
            time.sleep(0.3)

    task = _code_task(sandbox, data, len(answers))
    before = sandbox.runs
    killer = threading.Thread(target=kill_the_supervisor)
    killer.start()
    try:
        with pytest.warns(UserWarning, match="ended early"):
            got = verdicts(task.judge_all([(_item(data), a) for a in answers]))
    finally:
        killer.join()
    assert killed, "the supervisor was never found: the test proves nothing"
    assert got == expected
    assert sandbox.runs - before > 1  # the batch, then single runs for what it had not settled
    _clean_afterwards(sandbox)


def _is_batch(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b'"batch"' in fh.read()
    except OSError:
        return False


def _item(data):  # type: ignore[no-untyped-def]
    return PythonCodeTask(name="code", data=data([CODE_ITEM])).items("validation")[0]


def test_without_the_isolation_batches_need_answers_run_alone(tmp_path, data) -> None:
    sandbox = _sandbox(tmp_path, isolation="off")
    assert batch_unavailable(sandbox) == "isolation is off"
    jobs = [SandboxJob(argv=("true",)), SandboxJob(argv=("false",))]
    assert run_batch(sandbox, jobs) == [None, None]
    answers = ["def f(x):\n    return x + 1", "def f(x):\n    return x"]
    alone, together, runs = _both_ways(lambda size: _code_task(sandbox, data, size), answers)
    assert together == alone
    assert runs == 2  # one sandbox each
    assert [v[0] for v in together] == [True, False]


def test_batched_verdicts_are_remembered(tmp_path, data) -> None:
    sandbox = _sandbox(tmp_path)
    ctx = TaskContext(sandbox=sandbox, max_new_tokens=64, workers=2)
    items = [{**CODE_ITEM, "id": f"inc{k}"} for k in range(5)]
    task = PythonCodeTask(name="code", data=data(items), context=ctx, answer_prefix="def f(x): return ")
    answers = {f"inc{k}": ["x+1", "x", "1+x", "x+2", "x-(-1)"][k] for k in range(5)}
    first = task.score_predictions(answers, split="validation")
    assert [i.correct for i in first.items] == [True, False, True, False, True]
    assert sandbox.runs == 1
    again = task.score_predictions(answers, split="validation")
    assert verdicts(again.items) == verdicts(first.items)
    assert sandbox.runs == 1  # all five verdicts remembered


def test_check_batch_is_validated(data) -> None:
    for kind, item in ((PythonCodeTask, CODE_ITEM), (ShellTask, SHELL_ITEM)):
        with pytest.raises(ConfigError, match="check_batch: must be at least 1"):
            kind(name="t", data=data([item]), check_batch=0)
    assert PythonCodeTask(name="t", data=data([CODE_ITEM])).params.check_batch == 16


def test_chunks_are_even_and_bounded() -> None:
    assert chunks(0, 16) == []
    assert [len(c) for c in chunks(5, 16)] == [5]
    assert [len(c) for c in chunks(17, 16)] == [8, 9]
    assert [len(c) for c in chunks(33, 16)] == [11, 11, 11]
    assert [i for c in chunks(33, 16) for i in c] == list(range(33))
