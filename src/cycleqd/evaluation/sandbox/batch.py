"""Checking many programs in one sandboxed run, each on its own (the evaluating process's side).

Starting a sandbox costs tens of milliseconds (an interpreter for the launcher, namespaces, a cgroup, a
folder), checking a small program much less. :func:`run_batch` starts one sandbox for several programs
and leaves them to the supervisor inside (:mod:`~cycleqd.evaluation.sandbox.supervisor`), which runs
them one after another, each as a single run would: a fresh folder, its own limits and wall clock, every
process of the sandbox killed after it, nothing it wrote left for the next. A Python program marked
``warm`` runs in a fork of the supervisor's interpreter instead of a new one.

A program gets exactly the outcome a run of its own would give it, or ``None``: then the caller runs it
alone (:func:`run_alone`). That happens for every program of a batch on machines without the isolation
that keeps programs apart (a PID namespace and a read-only root), for the programs a batch had not
reached when its supervisor died or stalled, and for the rare program whose set-up or snapshot failed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import selectors
import struct
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cycleqd.evaluation.sandbox.core import Sandbox, SandboxSession
from cycleqd.evaluation.sandbox.folder import _UID_RANGE, _kill_uid, _safe_relpath
from cycleqd.evaluation.sandbox.limits import SandboxLimits, SandboxResult
from cycleqd.evaluation.sandbox.tree import snapshot
from cycleqd.evaluation.sandbox.watch import Launched

IN_FRAME = struct.Struct(">III")
OUT_FRAME = struct.Struct(">IIII")
MAX_HEADER = 1 << 16
MAX_TREE = 8 << 20
#: Isolation a batch needs: programs are kept apart by the PID namespace (everything is killed after
#: each) and the read-only root (a program can write only its own folder and its private /tmp).
NEEDED = frozenset({"pidns", "procfs", "minimal-root", "readonly-fs", "no-capabilities"})
#: Seconds a batch may go without finishing a program beyond that program's wall-clock limit
#: (start-up, killing, snapshot); past it the batch is killed and its remaining programs run alone.
SLACK_S = 10.0
#: Memory granted to a batch's sandbox as a whole beyond the limit, for the supervisor itself.
SUPERVISOR_MB = 64


@dataclass(frozen=True)
class SandboxJob:
    """One program to run in the sandbox.

    Attributes:
        argv: Program and arguments.
        files: Files of the working folder (relative path → content).
        support_files: Helper files for the ``support/`` folder.
        stdin: Data for standard input (none: ``/dev/null``).
        env: Extra (trusted) environment variables.
        snapshot: Also describe the working folder afterwards (:func:`~.tree.snapshot`).
        warm: ``argv`` is ``[python, "-I", script, ...]`` and, in a batch, may run in a fork of the
            supervisor's already started interpreter (when ``python`` is the evaluating interpreter).
    """

    argv: tuple[str, ...]
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    support_files: Mapping[str, str | bytes] = field(default_factory=dict)
    stdin: str | bytes | None = None
    env: Mapping[str, str] | None = None
    snapshot: bool = False
    warm: bool = False


@dataclass(frozen=True)
class JobOutcome:
    """What a program did.

    Attributes:
        result: Its run.
        tree: The working folder afterwards, when the job asked for it.
    """

    result: SandboxResult
    tree: dict[str, str] | None = None


def batch_unavailable(sandbox: Sandbox) -> str | None:
    """Why programs cannot share a sandboxed run here (``None`` when they can).

    Args:
        sandbox: The sandbox.

    Returns:
        The reason, or ``None``.
    """
    if sandbox.isolation_mode == "off":
        return "isolation is off"
    active = sandbox.probe().active
    missing = sorted(NEEDED - active)
    if os.geteuid() == 0 and sandbox.drop_root and "unprivileged-uid" not in active:
        missing.append("unprivileged-uid")
    if missing:
        return "the sandbox lacks " + ", ".join(missing)
    return None


def run_alone(sandbox: Sandbox, job: SandboxJob, *, limits: SandboxLimits | None = None) -> JobOutcome:
    """Run a program in a sandbox of its own (what a batch reproduces for each of its programs).

    Args:
        sandbox: The sandbox.
        job: The program.
        limits: Limits of the run (default: the sandbox's).

    Returns:
        What it did.
    """
    with sandbox.session(files=job.files, support_files=job.support_files) as s:
        result = s.run(job.argv, stdin=job.stdin, limits=limits, env=job.env)
        tree = snapshot(s.workdir) if job.snapshot else None
    return JobOutcome(result=result, tree=tree)


def run_batch(
    sandbox: Sandbox, jobs: Sequence[SandboxJob], *, limits: SandboxLimits | None = None
) -> list[JobOutcome | None]:
    """Run programs one after another in one sandboxed run, each as a run of its own would go.

    Args:
        sandbox: The sandbox.
        jobs: The programs.
        limits: Limits of each program (default: the sandbox's).

    Returns:
        One outcome per program, in order; ``None`` for a program that must be run alone instead.

    Raises:
        ValueError: For a file name that leaves the working folder, or a job without a program.
    """
    for job in jobs:
        if not job.argv:
            raise ValueError("argv must name a program")
        for name in (*job.files, *job.support_files):
            _safe_relpath(name)
    if not jobs or batch_unavailable(sandbox) is not None:
        return [None] * len(jobs)
    limits = limits or sandbox.limits
    with sandbox.session() as session:
        return execute_batch(sandbox, session, list(jobs), limits=limits)


def execute_batch(
    sandbox: Sandbox, session: SandboxSession, jobs: list[SandboxJob], *, limits: SandboxLimits
) -> list[JobOutcome | None]:
    """Start the batch's sandbox in a session's folder and collect what each program did.

    Args:
        sandbox: The sandbox.
        session: An empty session (its folder is the batch's).
        jobs: The programs.
        limits: Limits of each program.

    Returns:
        One outcome (or ``None``) per program.
    """
    frames = [_frame(sandbox, session, i, job) for i, job in enumerate(jobs)]
    settings = {
        "wall_s": limits.wall_s,
        "disk_bytes": limits.disk_mb * 1024 * 1024,
        "max_output": limits.max_output_kb * 1024,
        # As root each program gets a throwaway uid of its own, drawn as a session draws its own.
        "uid_range": list(_UID_RANGE),
    }
    extra_mb = SUPERVISOR_MB + 2 * (limits.max_output_kb // 1024 + 1)
    run = sandbox._launch(
        session,
        [sandbox.python],
        stdin=True,
        limits=limits,
        env=None,
        batch=settings,
        memory_extra_mb=extra_mb,
        # The evaluating process allows each program its wall clock plus the slack; so does the
        # launcher, for all of them, should that process hang.
        deadline_s=len(frames) * (limits.wall_s + SLACK_S),
    )
    try:
        watch = _BatchWatch(run, frames, limits)
        watch.run()
    finally:
        run.remove_cgroups()
        if session.uid is not None:
            _kill_uid(session.uid)
    if watch.trouble:
        # The verdicts do not suffer (what was not settled runs alone), but the speed does.
        warnings.warn(
            f"a batch of sandboxed checks ended early ({'; '.join(watch.trouble)}); the rest run one by one",
            stacklevel=4,
        )
    # Each program's own process drops every capability and, as root, takes the throwaway uid, or
    # does not run (it is then left to a run of its own).
    per_program = {"no-capabilities"} | ({"unprivileged-uid"} if session.uid is not None else set())
    isolation = frozenset(watch.isolation | per_program)
    out: list[JobOutcome | None] = []
    for i in range(len(jobs)):
        got = watch.results.get(i)
        if got is None or (jobs[i].snapshot and not got[3]):
            out.append(None)
            continue
        header, stdout, stderr, tree = got
        result = SandboxResult(
            returncode=header.get("code"),
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
            timed_out=bool(header.get("timed_out")),
            output_truncated=bool(header.get("truncated")),
            wall_s=float(header.get("wall_s", 0.0)),
            cpu_s=header.get("cpu_s"),
            max_rss_kb=header.get("maxrss_kb"),
            isolation=isolation,
            notes=tuple(watch.notes),
            disk_exceeded=bool(header.get("disk_exceeded")),
        )
        out.append(JobOutcome(result=result, tree=json.loads(tree) if jobs[i].snapshot else None))
    return out


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else bytes(data)).decode()


def _frame(sandbox: Sandbox, session: SandboxSession, index: int, job: SandboxJob) -> bytes:
    """A program as the supervisor reads it: lengths, header, body, stdin."""
    folder = session.root / "work" / str(index)
    env = sandbox._run_env(session, job.env)
    env["HOME"] = str(folder / "home")
    # Every batch has a minimal root with a private /tmp (a single run's init sets the same).
    env["TMPDIR"] = "/tmp"
    warm = (
        job.warm
        and len(job.argv) >= 3
        and job.argv[1] == "-I"
        and os.path.realpath(job.argv[0]) == os.path.realpath(sys.executable)
    )
    body = {
        "argv": list(job.argv),
        "env": env,
        "files": {name: _b64(data) for name, data in job.files.items()},
        "support": {name: _b64(data) for name, data in job.support_files.items()},
    }
    header = {"i": index, "warm": warm, "snapshot": job.snapshot, "stdin": job.stdin is not None}
    raw_header = json.dumps(header).encode()
    raw_body = json.dumps(body).encode()
    stdin = b"" if job.stdin is None else job.stdin.encode() if isinstance(job.stdin, str) else job.stdin
    return IN_FRAME.pack(len(raw_header), len(raw_body), len(stdin)) + raw_header + raw_body + stdin


class _BatchWatch:
    """Feeds the programs to the supervisor and reads what each did, within the time they may take."""

    def __init__(self, run: Launched, frames: list[bytes], limits: SandboxLimits) -> None:
        self.run_ = run
        self.frames = frames
        self.limits = limits
        self.cap = limits.max_output_kb * 1024
        self.results: dict[int, tuple[dict, bytes, bytes, bytes]] = {}
        self.isolation: set[str] = set()
        #: Notes of the launcher and the supervisor on the isolation (as a single run reports them).
        self.notes: list[str] = []
        #: What went wrong with the batch itself (its remaining programs then run alone).
        self.trouble: list[str] = []
        #: Programs left to a run of their own, and why.
        self.unsettled: dict[int, str] = {}
        self.ready = False
        self.stopped = False
        self.answered = 0
        self._buffer = bytearray()
        self._report = bytearray()

    def run(self) -> None:
        proc = self.run_.proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        threading.Thread(target=_feed_all, args=(proc, self.frames), daemon=True).start()
        sel = selectors.DefaultSelector()
        out, err, report = proc.stdout.fileno(), proc.stderr.fileno(), self.run_.report_r
        for fd in (out, err, report):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        stderr = bytearray()
        deadline = self.run_.start + self.limits.wall_s + SLACK_S
        try:
            while sel.get_map() and not self.stopped and self.answered < len(self.frames):
                now = time.monotonic()
                if now >= deadline:
                    self.trouble.append("it stalled")
                    break
                for key, _ in sel.select(min(0.5, deadline - now)):
                    try:
                        chunk = os.read(key.fd, 1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(key.fd)
                    elif key.fd == report:
                        self._report.extend(chunk[: (1 << 16) - len(self._report)])
                    elif key.fd == err:
                        stderr.extend(chunk[: (1 << 16) - len(stderr)])
                    else:
                        done = self.answered
                        self._buffer.extend(chunk)
                        if not self._parse():
                            self.stopped = True
                            break
                        if self.answered > done:
                            deadline = time.monotonic() + self.limits.wall_s + SLACK_S
        finally:
            sel.close()
            self.run_.reap()
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                with contextlib.suppress(OSError):
                    stream.close()
            os.close(report)
        for line in self._report.decode(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                msg = json.loads(line)
                for part in ("launcher", "child"):
                    if part in msg:
                        self.isolation.update(msg[part].get("isolation", []))
                        self.notes.extend(msg[part].get("notes", []))
        if self.answered < len(self.frames) and not self.trouble:
            self.trouble.append("its supervisor ended")
        if self.trouble and stderr.strip():
            self.trouble.append("supervisor: " + stderr.decode(errors="replace").strip()[-300:])

    def _parse(self) -> bool:
        """Take the complete frames out of the buffer; ``False`` on a frame that breaks the protocol."""
        buf = self._buffer
        while len(buf) >= OUT_FRAME.size:
            n_header, n_out, n_err, n_tree = OUT_FRAME.unpack_from(buf)
            if n_header > MAX_HEADER or n_out > self.cap or n_err > self.cap or n_tree > MAX_TREE:
                return False
            total = OUT_FRAME.size + n_header + n_out + n_err + n_tree
            if len(buf) < total:
                return True
            at = OUT_FRAME.size
            try:
                header = json.loads(bytes(buf[at : at + n_header]))
            except json.JSONDecodeError:
                self.trouble.append("a malformed report")
                return False
            at += n_header
            stdout = bytes(buf[at : at + n_out])
            stderr = bytes(buf[at + n_out : at + n_out + n_err])
            tree = bytes(buf[at + n_out + n_err : total])
            del buf[:total]
            if not self._take(header, stdout, stderr, tree):
                return False
        return True

    def _take(self, header: dict, stdout: bytes, stderr: bytes, tree: bytes) -> bool:
        if "refused" in header:
            self.trouble.append(f"refused: {header['refused']}")
            return False
        if "ready" in header:
            self.ready = True
            return True
        if "stop" in header:
            self.trouble.append(f"stopped: {header['stop']}")
            return False
        index = header.get("i")
        if not self.ready or not isinstance(index, int) or not 0 <= index < len(self.frames):
            self.trouble.append("an unexpected report")
            return False
        self.answered += 1
        if "unsettled" in header:
            self.unsettled[index] = str(header["unsettled"])
        else:
            self.results[index] = (header, stdout, stderr, tree)
        return True


def _feed_all(proc: object, frames: list[bytes]) -> None:
    stdin = proc.stdin  # type: ignore[attr-defined]
    with contextlib.suppress(OSError):
        for frame in frames:
            stdin.write(frame)
            stdin.flush()
    with contextlib.suppress(OSError):
        stdin.close()
