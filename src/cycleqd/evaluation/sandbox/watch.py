"""Watching one sandboxed run: its clock, its output, its disk, and what its launcher reports.

The evaluating process enforces the wall clock, the output cap and the disk quota; when the run ends
(or is stopped) its whole process group, cgroups and throwaway uid are killed, and the launcher's
report says which isolation held and how the program exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cycleqd.evaluation.sandbox.cgroup import CgroupSet
from cycleqd.evaluation.sandbox.folder import _kill_uid
from cycleqd.evaluation.sandbox.limits import SandboxLimits, SandboxResult
from cycleqd.evaluation.sandbox.tree import DiskQuota
from cycleqd.evaluation.sandbox.warden import warden

#: Seconds a run's output is still read after its program exited (or was killed).
_GRACE_S = 0.2


@dataclass
class Launched:
    """A started launcher.

    Attributes:
        proc: The launcher process (leader of its own session).
        report_r: Read end of its report pipe.
        cgroups: The cgroups it joined (removed by the caller when done).
        notes: Notes from making the cgroups.
        start: ``time.monotonic()`` just before it started.
        token: The warden's registration of its process group and cgroups.
    """

    proc: subprocess.Popen[bytes]
    report_r: int
    cgroups: CgroupSet
    notes: list[str]
    start: float
    token: str

    def reap(self) -> None:
        """Kill the launcher's process group and wait for the launcher (whose group id is then free)."""
        # The launcher is at worst a zombie until the wait below (never reaped before), so its process
        # group id cannot have been reused: killing the group is safe, and so is the warden's copy.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.cgroups.kill_all()
        warden().release(self.token, "pgid")
        self.proc.wait()

    def remove_cgroups(self) -> None:
        """Kill what is left in the cgroups and delete them."""
        self.cgroups.remove()
        warden().release(self.token)


class RunWatch:
    """Watches one started launcher until its program ends or a limit stops it.

    Args:
        run: The started launcher.
        limits: The run's limits (wall clock, output, disk).
        root: The session folder (its size is the disk quota's).
        uid: The session's throwaway uid, whose processes die with the run (``None``: none).
    """

    def __init__(self, run: Launched, limits: SandboxLimits, *, root: Path, uid: int | None) -> None:
        self.run = run
        self.limits = limits
        self.root = root
        self.uid = uid
        proc = run.proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._buffers: dict[int, bytearray] = {
            proc.stdout.fileno(): bytearray(),
            proc.stderr.fileno(): bytearray(),
        }
        self._report = bytearray()
        self._truncated = False
        self._sel = selectors.DefaultSelector()
        for fd in (*self._buffers, run.report_r):
            os.set_blocking(fd, False)
            self._sel.register(fd, selectors.EVENT_READ)

    def result(self, stdin: str | bytes | None) -> SandboxResult:
        """Feed ``stdin``, watch the run to its end (or its limits) and say what it did.

        Args:
            stdin: What the program reads on its standard input (``None``: nothing).

        Returns:
            The result (exit code, output, what stopped it, the isolation it had).
        """
        proc = self.run.proc
        if stdin is not None:
            data = stdin.encode() if isinstance(stdin, str) else stdin
            threading.Thread(target=_feed, args=(proc, data), daemon=True).start()
        try:
            timed_out, disk_exceeded = self._until_done()
        finally:
            end = self._stop()
        code, cpu_s, rss, isolation = self._read_report(stopped=timed_out or disk_exceeded)
        out, err = (bytes(b).decode("utf-8", errors="replace") for b in self._buffers.values())
        return SandboxResult(
            returncode=code,
            stdout=out,
            stderr=err,
            timed_out=timed_out,
            output_truncated=self._truncated,
            wall_s=end - self.run.start,
            cpu_s=cpu_s,
            max_rss_kb=rss,
            isolation=frozenset(isolation),
            notes=tuple(self.run.notes),
            disk_exceeded=disk_exceeded,
        )

    def _drain(self, timeout: float) -> None:
        """Read what is ready (output up to its cap, the launcher's report up to 64 KiB)."""
        cap = self.limits.max_output_kb * 1024
        for key, _ in self._sel.select(timeout):
            fd = key.fd
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self._sel.unregister(fd)
                continue
            if fd == self.run.report_r:
                self._report.extend(chunk[: 65536 - len(self._report)])
                continue
            room = cap - len(self._buffers[fd])
            if len(chunk) > room:
                self._truncated = True
            self._buffers[fd].extend(chunk[: max(room, 0)])

    def _until_done(self) -> tuple[bool, bool]:
        """Read the output until the program exits or a limit is reached: (timed out, disk exceeded)."""
        run, sel = self.run, self._sel
        deadline = run.start + self.limits.wall_s
        quota = DiskQuota(self.root, self.limits.disk_mb * 1024 * 1024, start=run.start)
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                return True, False
            if quota.due_and_exceeded(now):
                return False, True
            if sel.get_map():
                self._drain(min(0.05, deadline - now))
            else:
                time.sleep(min(0.01, deadline - now))
            if exited_at is None and _has_exited(run.proc.pid):
                exited_at = time.monotonic()
            if exited_at is not None and (not sel.get_map() or time.monotonic() - exited_at > _GRACE_S):
                break
        # What it wrote since the last measurement counts too.
        return False, quota.exceeded()

    def _stop(self) -> float:
        """Kill everything the run started, read what is left, close the pipes; the end time."""
        run, proc = self.run, self.run.proc
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        run.cgroups.kill_all()
        if self.uid is not None:
            _kill_uid(self.uid)
        end = time.monotonic()
        grace_end = end + _GRACE_S
        while self._sel.get_map() and time.monotonic() < grace_end:
            self._drain(0.02)
        self._sel.close()
        run.reap()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        os.close(run.report_r)
        return end

    def _read_report(self, *, stopped: bool) -> tuple[int | None, float | None, int | None, set[str]]:
        """From the launcher's report: exit code, CPU seconds, peak memory and the isolation held."""
        isolation: set[str] = set()
        code: int | None = None if stopped else self.run.proc.returncode
        cpu_s = rss = None
        program_exit = False
        for line in self._report.decode(errors="replace").splitlines():
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            for part in ("launcher", "child"):
                if part in msg:
                    isolation.update(msg[part].get("isolation", []))
                    self.run.notes.extend(msg[part].get("notes", []))
            if "exit" in msg and not stopped:
                code = msg["exit"]["code"]
                cpu_s = msg["exit"].get("cpu_s")
                rss = msg["exit"].get("maxrss_kb")
                program_exit = True
            if "launcher_exit" in msg and not stopped and not program_exit:
                code = msg["launcher_exit"]["code"]
        return code, cpu_s, rss, isolation


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(OSError):
        proc.stdin.write(data)
    with contextlib.suppress(OSError):
        proc.stdin.close()


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid stays reserved)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None
