"""The disk quota: a program that fills its folder with many files, each under the per-file limit, is
stopped at the quota (alone and in a batch), with the host's free space intact; ordinary programs are not.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cycleqd.evaluation.sandbox import Sandbox, SandboxLimits
from cycleqd.evaluation.sandbox.batch import SandboxJob, run_batch
from cycleqd.evaluation.sandbox.tree import ENTRY_BYTES, usage

LIMITS = SandboxLimits(wall_s=20, cpu_s=10, memory_mb=256, max_processes=16, max_file_mb=1, disk_mb=4)

# 1 MB files, one after another, forever: each is under max_file_mb, the sum is not.
FILLER = (
    "import itertools, os\n"
    "block = b'x' * (1 << 20)\n"
    "for i in itertools.count():\n"
    "    with open(f'fill{i}', 'wb') as fh:\n"
    "        fh.write(block)\n"
)
# Empty files: blocks alone would never reach the quota, the entries do.
EMPTIES = "import itertools\nfor i in itertools.count():\n    open(f'e{i}', 'w').close()\n"
SMALL = "open('a.txt', 'w').write('x' * 100000)\nprint('ok')\n"


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(LIMITS, base_dir=tmp_path)


def test_usage_counts_blocks_and_entries(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 10000)
    with open(tmp_path / "sparse", "wb") as fh:  # 1 GB long, nothing written: counts its blocks only
        fh.truncate(1 << 30)
    blocks = sum(
        os.lstat(p).st_blocks * 512 for p in (tmp_path / "d", tmp_path / "d" / "f", tmp_path / "sparse")
    )
    assert usage(tmp_path) == blocks + 3 * ENTRY_BYTES
    assert usage(tmp_path) < 1 << 20
    assert usage(tmp_path, stop_above=ENTRY_BYTES) > ENTRY_BYTES  # stopped early: only known to be above


@pytest.mark.parametrize("program", [FILLER, EMPTIES], ids=["big-files", "empty-files"])
def test_a_disk_filler_is_stopped_at_the_quota(sandbox: Sandbox, program: str, tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    r = sandbox.run([sandbox.python, "-I", "-c", program])
    assert r.disk_exceeded
    assert not r.timed_out
    assert not r.ok
    assert (
        r.failure() == "wrote more than the sandbox's disk quota (evaluation.sandbox.disk_mb; it was killed)"
    )
    assert r.wall_s < LIMITS.wall_s / 2
    assert shutil.disk_usage(tmp_path).free > free - (256 << 20)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_filler_in_a_batch_is_stopped_and_its_neighbours_are_not(sandbox: Sandbox) -> None:
    def job(code: str) -> SandboxJob:
        return SandboxJob(argv=(sandbox.python, "-I", "main.py"), files={"main.py": code}, warm=True)

    got = run_batch(sandbox, [job(SMALL), job(FILLER), job(SMALL), job(EMPTIES), job(SMALL)])
    assert all(g is not None for g in got)
    assert [g.result.disk_exceeded for g in got] == [False, True, False, True, False]
    assert [g.result.stdout.strip() for g in got[::2]] == ["ok"] * 3
    assert all(g.result.wall_s < LIMITS.wall_s / 2 for g in got)


def test_a_program_that_writes_past_the_quota_and_ends_at_once_still_fails(sandbox: Sandbox) -> None:
    burst = "for i in range(6):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n"
    assert sandbox.run([sandbox.python, "-I", "-c", burst]).disk_exceeded
    assert not sandbox.run([sandbox.python, "-I", "-c", SMALL]).disk_exceeded


def test_a_python_answer_past_the_quota_fails_even_when_its_tests_pass(tmp_path: Path, data) -> None:
    from cycleqd.evaluation.tasks import PythonCodeTask
    from cycleqd.evaluation.tasks.common import TaskContext

    ctx = TaskContext(sandbox=Sandbox(LIMITS, base_dir=tmp_path), max_new_tokens=64, workers=1)
    items = [{"id": i, "prompt": "f(x) = x + 1", "tests": ["assert f(1) == 2"]} for i in ("a", "b", "c")]
    honest = "def f(x):\n    return x + 1\n"
    burst = "for i in range(6):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n" + honest
    answers = {"a": burst, "b": honest, "c": burst}
    for check_batch in (1, 3):  # alone, and in one batch
        task = PythonCodeTask(
            name="code", data=data(items), context=ctx, memoize=False, check_batch=check_batch
        )
        got = {r.item_id: r for r in task.score_predictions(answers, split="validation").items}
        assert got["b"].correct, (check_batch, got["b"].reason)
        for key in ("a", "c"):
            assert not got[key].correct, check_batch
            assert got[key].reason.startswith("wrote more than the sandbox's disk quota"), got[key].reason
