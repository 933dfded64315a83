"""Running untrusted programs (what a model wrote) in a contained process.

Everything a model writes that gets executed (Python, SQL, shell) goes through :class:`Sandbox`. The
parent only prepares a folder, starts :mod:`~cycleqd.evaluation.sandbox.launcher` in a new session and
watches the clock and the output; the launcher does the isolation (see its docstring and
``docs/sandbox.md``). Several programs can share one sandboxed run, each still on its own
(:mod:`~cycleqd.evaluation.sandbox.batch`). The standard library is all this needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from cycleqd.errors import CycleQDError
from cycleqd.evaluation.sandbox.cgroup import CgroupSet, create_cgroups, kill_until_gone
from cycleqd.evaluation.sandbox.tree import DiskQuota, remove_tree
from cycleqd.evaluation.sandbox.warden import uid_pids, warden

LAUNCHER = Path(__file__).with_name("launcher.py")
SYSTEM_BINDS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
PATH = "/usr/local/bin:/usr/bin:/bin"
_UID_RANGE = (1_800_000_000, 1_900_000_000)
_GRACE_S = 0.2
#: Seconds a launcher outlives its run's limits before it kills its sandbox itself (should the
#: evaluating process, which enforces them, hang or be stopped).
LAUNCHER_MARGIN_S = 5.0

#: What each isolation name in :attr:`SandboxResult.isolation` means.
ISOLATION_NAMES: dict[str, str] = {
    "session": "own session and process group, killed as a whole",
    "rlimits": "limits on CPU time, address space, processes, file size and open files",
    "scrubbed-env": "minimal environment (PATH, LANG, HOME, TMPDIR), nothing inherited",
    "private-folder": "fresh temporary working folder and HOME",
    "cgroup-pids": "cgroup cap on the number of processes of the whole sandbox",
    "cgroup-memory": "cgroup cap on the memory of the whole sandbox",
    "userns": "user namespace (how an unprivileged user gets the other namespaces)",
    "netns": "network namespace without interfaces: no network, not even the host's loopback",
    "pidns": "PID namespace: host processes invisible, everything dies with the sandbox",
    "ipcns": "IPC namespace (no shared memory or message queues with the host)",
    "utsns": "UTS namespace (host name changes stay inside)",
    "minimal-root": "only system folders and the Python installation visible; private /tmp and /dev",
    "readonly-fs": "every mount read-only (and nosuid) except the working folder and /tmp",
    "procfs": "fresh read-only /proc showing only the sandbox's processes",
    "no-capabilities": "empty capability bounding set and no_new_privs",
    "unprivileged-uid": "runs as a throwaway uid (when started as root)",
}


class SandboxUnavailableError(CycleQDError):
    """The isolation the configuration requires is not available on this machine."""


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


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run.

    Attributes:
        wall_s: Wall-clock seconds before the whole sandbox is killed.
        cpu_s: CPU seconds per process (SIGXCPU, then SIGKILL one second later).
        memory_mb: Address space per process, and memory of the whole sandbox where a memory cgroup
            can be made.
        max_processes: Processes and threads alive at once.
        max_file_mb: Largest file a process may write.
        disk_mb: Most the sandbox's folder may hold, all files together (each entry counts its blocks
            and 1 KB); a run that writes more is killed (checked every 0.1 s, so it may overshoot by
            what it writes in that time, under ``max_file_mb`` per file).
        max_open_files: Open file descriptors per process.
        max_output_kb: Stdout and stderr kept each; the rest is dropped (and flagged).
        tmp_mb: Size of the private ``/tmp``.
        network: Allow network access (off: the sandbox gets its own empty network namespace).
    """

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 64
    max_file_mb: int = 16
    disk_mb: int = 64
    max_open_files: int = 256
    max_output_kb: int = 1024
    tmp_mb: int = 64
    network: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "network" and not value > 0:
                raise ValueError(f"sandbox limit {f.name} must be positive, got {value!r}")

    def replace(self, **changes: object) -> SandboxLimits:
        """A copy with some limits changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def rlimits(self) -> dict[str, object]:
        """The ``setrlimit`` values the launcher applies."""
        cpu = max(1, round(self.cpu_s))
        return {
            "CPU": [cpu, cpu + 1],
            "AS": self.memory_mb * 1024 * 1024,
            "NPROC": self.max_processes,
            "FSIZE": self.max_file_mb * 1024 * 1024,
            "NOFILE": self.max_open_files,
            "CORE": 0,
        }


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed program did.

    Attributes:
        returncode: Exit status (negative: killed by that signal); ``None`` if it never finished.
        stdout: Standard output (UTF-8, undecodable bytes replaced), at most ``max_output_kb``.
        stderr: Standard error, likewise.
        timed_out: Killed at the wall-clock limit.
        output_truncated: Some output was dropped.
        wall_s: Seconds from start to end.
        cpu_s: CPU seconds used by the program's main process, when known.
        max_rss_kb: Peak resident memory of the main process, when known.
        isolation: Names of the isolation features that took effect (see :data:`ISOLATION_NAMES`).
        notes: Why some features did not take effect.
        disk_exceeded: Killed because its folder held more than the disk quota (``disk_mb``).
    """

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool
    wall_s: float
    cpu_s: float | None = None
    max_rss_kb: int | None = None
    isolation: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()
    disk_exceeded: bool = False

    @property
    def stopped(self) -> bool:
        """Killed by a limit of the sandbox as a whole (the wall clock or the disk quota)."""
        return self.timed_out or self.disk_exceeded

    @property
    def ok(self) -> bool:
        """Finished in time with exit status 0, within the disk quota."""
        return not self.stopped and self.returncode == 0

    def failure(self) -> str | None:
        """A one-line reason why the run failed, ``None`` when it succeeded."""
        if self.ok:
            return None
        if self.disk_exceeded:
            return "wrote more than the sandbox's disk quota (evaluation.sandbox.disk_mb; it was killed)"
        if self.timed_out:
            return f"timed out after {self.wall_s:.1f} s (the sandbox was killed)"
        code = self.returncode
        if code is None:
            return "did not finish"
        if code < 0:
            return _signal_reason(-code)
        tail = self.stderr.strip().splitlines()
        last = tail[-1] if tail else ""
        if "MemoryError" in last:
            return "ran out of memory (MemoryError at the memory limit)"
        if code == 127 and last.startswith("sandbox: cannot start"):
            return last.removeprefix("sandbox: ")
        return f"exit status {code}" + (f": {last[:300]}" if last else "")


def _signal_reason(sig: int) -> str:
    reasons = {
        signal.SIGXCPU: "CPU time limit exceeded",
        signal.SIGXFSZ: "file size limit exceeded",
        signal.SIGKILL: "killed (SIGKILL: CPU time or memory limit)",
        signal.SIGSEGV: "crashed (segmentation fault)",
        signal.SIGABRT: "aborted",
    }
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return reasons.get(sig, f"killed by {name}")


@dataclass(frozen=True)
class IsolationReport:
    """Which isolation features work on this machine (from a probe run).

    Attributes:
        active: Names of the features that took effect.
        notes: Why others did not.
    """

    active: frozenset[str]
    notes: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        """One line per feature: ``name: meaning``."""
        return [f"{name}: {ISOLATION_NAMES.get(name, name)}" for name in sorted(self.active)]


def _safe_relpath(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or not p.parts or any(part in ("..", "") for part in p.parts) or name.endswith("/"):
        raise ValueError(
            f"file name {name!r} must be a relative path inside the working folder, without '..'"
        )
    return p


def write_files(folder: Path, files: Mapping[str, str | bytes]) -> None:
    """Create files (and their folders) under ``folder``.

    Args:
        folder: Destination folder.
        files: Relative path → text (UTF-8) or bytes.

    Raises:
        ValueError: For an absolute path or one that leaves the folder.
    """
    for name, content in files.items():
        rel = _safe_relpath(name)
        path = folder.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else bytes(content)
        path.write_bytes(data)


def _chown_tree(folder: Path, uid: int, gid: int) -> None:
    os.chown(folder, uid, gid)
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process running as ``uid`` (a throwaway uid owned by one sandbox only)."""
    kill_until_gone(lambda: uid_pids(uid), timeout=0.5)


class SandboxSession:
    """A sandbox folder kept across several runs (an agent episode, a shell task and its checks).

    Use :meth:`Sandbox.session`. The folder layout is ``work/`` (the working folder, current directory
    of every run), ``home/`` (``HOME``), ``tmp/`` (``TMPDIR`` when there is no private ``/tmp``) and
    ``support/`` (helper scripts the caller provides; read-only for the program when it runs under a
    throwaway uid).

    Attributes:
        root: The session folder.
        workdir: The working folder.
        support: The folder of helper files.
    """

    def __init__(
        self, sandbox: Sandbox, *, files: Mapping[str, str | bytes], support_files: Mapping[str, str | bytes]
    ):
        self._sandbox = sandbox
        base = sandbox.base_dir
        base.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="cycleqd-sandbox-", dir=base))
        # Removed by the warden should this process die before close().
        self._token = warden().watch(folder=self.root)
        self.workdir = self.root / "work"
        self.support = self.root / "support"
        self.uid: int | None = None
        self._closed = False
        try:
            for d in (self.workdir, self.root / "home", self.root / "tmp", self.support):
                d.mkdir()
            os.chmod(self.root, 0o711)
            os.chmod(self.support, 0o755)
            write_files(self.workdir, files)
            write_files(self.support, support_files)
            for p in self.support.rglob("*"):
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
            if os.geteuid() == 0 and sandbox.drop_root:
                span = _UID_RANGE[1] - _UID_RANGE[0]
                self.uid = _UID_RANGE[0] + int.from_bytes(os.urandom(4), "little") % span
                self._uid_token = warden().watch(uid=self.uid)
                for d in (self.workdir, self.root / "home", self.root / "tmp"):
                    _chown_tree(d, self.uid, self.uid)
                    os.chmod(d, 0o755)
        except BaseException:
            remove_tree(self.root)
            warden().release(self._token)
            raise

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | bytes | None = None,
        limits: SandboxLimits | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        """Run a program in the session's folder.

        Args:
            argv: Program and arguments (the program is looked up on the sandbox's ``PATH``).
            stdin: Data for standard input (none: ``/dev/null``).
            limits: Limits for this run (default: the sandbox's).
            env: Extra environment variables (trusted values only: the rest is scrubbed).

        Returns:
            What happened.
        """
        if self._closed:
            raise RuntimeError("the sandbox session is closed")
        return self._sandbox._execute(
            self, list(argv), stdin=stdin, limits=limits or self._sandbox.limits, env=env
        )

    def read_file(self, name: str, *, max_bytes: int = 1 << 20) -> bytes | None:
        """Read a regular file of the working folder without following symlinks.

        Args:
            name: Relative path.
            max_bytes: Read at most this much.

        Returns:
            The bytes, or ``None`` when there is no regular file of that name.
        """
        rel = _safe_relpath(name)
        dir_fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in rel.parts[:-1]:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                except OSError:
                    return None
                os.close(dir_fd)
                dir_fd = nxt
            try:
                fd = os.open(rel.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:
                return None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return None
                return os.read(fd, max_bytes)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        """Kill anything left of the session's processes and delete its folder."""
        if self._closed:
            return
        self._closed = True
        if self.uid is not None:
            _kill_uid(self.uid)
            warden().release(self._uid_token)
        remove_tree(self.root)
        warden().release(self._token)

    def __enter__(self) -> SandboxSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sandbox:
    """Runs programs with limits, in a private folder, isolated as far as the OS allows.

    Args:
        limits: Default limits of each run.
        isolation: ``auto`` uses whatever isolation the machine offers; ``required`` refuses to run
            (with :class:`SandboxUnavailableError`) unless the network, file system and process
            isolation are all in place; ``off`` uses only limits, a session and a scrubbed environment
            (no namespaces), for debugging.
        binds: Extra host paths the program may read (besides the system folders and the Python
            installation).
        python: Interpreter for Python programs (default: the current one).
        base_dir: Where session folders are made (default: the system's temporary folder).
        drop_root: When started as root, run programs under a throwaway unprivileged uid.
    """

    _probes: dict[tuple[object, ...], IsolationReport] = {}  # noqa: RUF012 - shared cache, guarded by _lock
    _lock = threading.Lock()

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        isolation: Literal["auto", "required", "off"] = "auto",
        binds: Sequence[str | Path] = (),
        python: str | None = None,
        base_dir: str | Path | None = None,
        drop_root: bool = True,
    ) -> None:
        if isolation not in ("auto", "required", "off"):
            raise ValueError(f"isolation must be auto, required or off, not {isolation!r}")
        self.limits = limits or SandboxLimits()
        self.isolation_mode = isolation
        self.python = python or sys.executable
        self.base_dir = Path(base_dir or tempfile.gettempdir())
        self.drop_root = drop_root
        self._binds = self._default_binds() + [str(Path(b)) for b in binds]
        self.mount_api = "auto"

    def _default_binds(self) -> list[str]:
        paths: list[str] = []
        for p in (*SYSTEM_BINDS, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
            for q in (p, os.path.realpath(p)):
                if os.path.lexists(q) and q not in paths:
                    paths.append(q)
        exe_dir = os.path.dirname(os.path.realpath(self.python))
        if exe_dir not in paths:
            paths.append(exe_dir)
        return paths

    # -- public API --------------------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        support_files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        limits: SandboxLimits | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        """Run one program in a fresh folder that is deleted afterwards.

        Args:
            argv: Program and arguments.
            files: Files of the working folder (relative path → content).
            support_files: Helper files put in the session's ``support/`` folder.
            stdin: Data for standard input.
            limits: Limits for this run (default: the sandbox's).
            env: Extra (trusted) environment variables.

        Returns:
            What happened.
        """
        with self.session(files=files, support_files=support_files) as s:
            return s.run(argv, stdin=stdin, limits=limits, env=env)

    def run_python(
        self,
        code: str,
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        limits: SandboxLimits | None = None,
    ) -> SandboxResult:
        """Run Python source (``main.py`` in the working folder) with :attr:`python` in isolated mode.

        Args:
            code: The program.
            files: Other files of the working folder.
            stdin: Data for standard input.
            limits: Limits for this run.

        Returns:
            What happened.
        """
        return self.run(
            [self.python, "-I", "main.py"],
            files={**(files or {}), "main.py": code},
            stdin=stdin,
            limits=limits,
        )

    @contextlib.contextmanager
    def session(
        self,
        *,
        files: Mapping[str, str | bytes] | None = None,
        support_files: Mapping[str, str | bytes] | None = None,
    ) -> Iterator[SandboxSession]:
        """A folder kept across several runs, deleted at the end.

        Args:
            files: Initial files of the working folder.
            support_files: Helper files for the ``support/`` folder.

        Yields:
            The session.
        """
        if self.isolation_mode == "required":
            self.require()
        s = SandboxSession(self, files=files or {}, support_files=support_files or {})
        try:
            yield s
        finally:
            s.close()

    def probe(self) -> IsolationReport:
        """Which isolation features work here, found by running a trivial program once (cached).

        Returns:
            The report.
        """
        key = (self.isolation_mode == "off", self.limits.network, self.drop_root, self.python, self.mount_api)
        with Sandbox._lock:
            cached = Sandbox._probes.get(key)
        if cached is not None:
            return cached
        s = SandboxSession(self, files={}, support_files={})
        try:
            result = self._execute(
                s, [self.python, "-I", "-S", "-c", "pass"], stdin=None, limits=self.limits, env=None
            )
        finally:
            s.close()
        report = IsolationReport(active=result.isolation, notes=result.notes)
        with Sandbox._lock:
            Sandbox._probes[key] = report
        return report

    def require(self) -> None:
        """Raise unless network, file-system and process isolation are all in place.

        Raises:
            SandboxUnavailableError: Naming what is missing and why.
        """
        report = self.probe()
        needed = {"minimal-root", "readonly-fs", "pidns", "procfs"}
        if not self.limits.network:
            needed.add("netns")
        missing = sorted(needed - report.active)
        if not ({"cgroup-pids", "unprivileged-uid", "userns"} & report.active):
            missing.append("a process cap (cgroup-pids, unprivileged-uid or userns)")
        if missing:
            why = "; ".join(report.notes) or "no reason given"
            raise SandboxUnavailableError(
                f"the sandbox lacks {', '.join(missing)} on this machine ({why}); run where user namespaces "
                "are allowed (sysctl kernel.unprivileged_userns_clone=1, or a container started with "
                "--security-opt seccomp=unconfined), or set evaluation.sandbox.isolation: auto to accept "
                "weaker isolation"
            )

    # -- internals ---------------------------------------------------------------------------------
    def _run_env(self, session: SandboxSession, env: Mapping[str, str] | None) -> dict[str, str]:
        return {
            "PATH": PATH,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(session.root / "home"),
            "TMPDIR": str(session.root / "tmp"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            **(env or {}),
        }

    def _launch(
        self,
        session: SandboxSession,
        argv: list[str],
        *,
        stdin: bool,
        limits: SandboxLimits,
        env: Mapping[str, str] | None,
        batch: Mapping[str, object] | None = None,
        memory_extra_mb: int = 0,
        deadline_s: float | None = None,
    ) -> Launched:
        """Start the launcher for one run (or, with ``batch``, for the batch supervisor).

        Args:
            session: The session whose folder the run uses.
            argv: The program.
            stdin: Give the launcher a pipe on stdin (else ``/dev/null``).
            limits: The run's limits.
            env: Extra environment variables.
            batch: Settings of a batch (see :mod:`~cycleqd.evaluation.sandbox.batch`).
            memory_extra_mb: Memory granted to the sandbox as a whole beyond ``limits.memory_mb`` (for
                the batch supervisor's own buffers).
            deadline_s: Seconds after which the launcher kills its sandbox itself (default: the wall
                clock plus :data:`LAUNCHER_MARGIN_S`); the evaluating process kills it first unless it
                hangs.

        Returns:
            The started launcher.
        """
        run_env = self._run_env(session, env)
        cgroups = CgroupSet()
        notes: list[str] = []
        if os.geteuid() == 0 and self.isolation_mode != "off":
            # +2: the launcher and the program's first process (or the batch supervisor).
            cgroups, notes = create_cgroups(
                max_processes=limits.max_processes + 2,
                memory_bytes=(limits.memory_mb + memory_extra_mb) * 1024 * 1024,
            )
        report_r, report_w = os.pipe()
        config = {
            "root": str(session.root),
            "cwd": str(session.workdir),
            "binds": sorted(self._binds),
            "argv": argv,
            "env": run_env,
            "rlimits": limits.rlimits(),
            "network": limits.network,
            "namespaces": self.isolation_mode != "off",
            "tmp_bytes": limits.tmp_mb * 1024 * 1024,
            "cgroups": cgroups.join_spec(),
            "uid": session.uid,
            "gid": session.uid,
            "report_fd": report_w,
            "mount_api": self.mount_api,
            "parent": os.getpid(),
            "deadline_s": (limits.wall_s if deadline_s is None else deadline_s) + LAUNCHER_MARGIN_S,
        }
        if batch is not None:
            config["batch"] = dict(batch)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(config)],
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=(report_w,),
                env=run_env,
                cwd=str(session.workdir),
                close_fds=True,
            )
        except BaseException:
            os.close(report_r)
            os.close(report_w)
            cgroups.remove()
            raise
        os.close(report_w)
        token = warden().watch(pgid=proc.pid, cgroups=cgroups.dirs.values())
        return Launched(proc=proc, report_r=report_r, cgroups=cgroups, notes=notes, start=start, token=token)

    def _execute(
        self,
        session: SandboxSession,
        argv: list[str],
        *,
        stdin: str | bytes | None,
        limits: SandboxLimits,
        env: Mapping[str, str] | None,
    ) -> SandboxResult:
        if not argv:
            raise ValueError("argv must name a program")
        run = self._launch(session, argv, stdin=stdin is not None, limits=limits, env=env)
        try:
            return self._watch(run, stdin, limits, session)
        finally:
            run.remove_cgroups()

    def _watch(
        self, run: Launched, stdin: str | bytes | None, limits: SandboxLimits, session: SandboxSession
    ) -> SandboxResult:
        proc, report_r, start, notes = run.proc, run.report_r, run.start, run.notes
        assert proc.stdout is not None
        assert proc.stderr is not None
        if stdin is not None:
            data = stdin.encode() if isinstance(stdin, str) else stdin
            threading.Thread(target=_feed, args=(proc, data), daemon=True).start()
        cap = limits.max_output_kb * 1024
        buffers: dict[int, bytearray] = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        report = bytearray()
        truncated = False
        sel = selectors.DefaultSelector()
        for fd in (*buffers, report_r):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        deadline = start + limits.wall_s
        exited_at: float | None = None
        timed_out = disk_exceeded = False
        quota = DiskQuota(session.root, limits.disk_mb * 1024 * 1024, start=start)

        def drain(timeout: float) -> None:
            nonlocal truncated
            for key, _ in sel.select(timeout):
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                if fd == report_r:
                    report.extend(chunk[: 65536 - len(report)])
                    continue
                room = cap - len(buffers[fd])
                if len(chunk) > room:
                    truncated = True
                buffers[fd].extend(chunk[: max(room, 0)])

        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if quota.due_and_exceeded(now):
                    disk_exceeded = True
                    break
                if sel.get_map():
                    drain(min(0.05, deadline - now))
                else:
                    time.sleep(min(0.01, deadline - now))
                if exited_at is None and _has_exited(proc.pid):
                    exited_at = time.monotonic()
                if exited_at is not None and (not sel.get_map() or time.monotonic() - exited_at > _GRACE_S):
                    break
            # What it wrote since the last measurement counts too.
            disk_exceeded = disk_exceeded or (not timed_out and quota.exceeded())
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            run.cgroups.kill_all()
            if session.uid is not None:
                _kill_uid(session.uid)
            end = time.monotonic()
            grace_end = end + _GRACE_S
            while sel.get_map() and time.monotonic() < grace_end:
                drain(0.02)
            sel.close()
            run.reap()
            for stream in (proc.stdout, proc.stderr):
                stream.close()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            os.close(report_r)

        isolation: set[str] = set()
        stopped = timed_out or disk_exceeded
        code: int | None = None if stopped else proc.returncode
        cpu_s = rss = None
        program_exit = False
        for line in report.decode(errors="replace").splitlines():
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            for part in ("launcher", "child"):
                if part in msg:
                    isolation.update(msg[part].get("isolation", []))
                    notes.extend(msg[part].get("notes", []))
            if "exit" in msg and not stopped:
                code = msg["exit"]["code"]
                cpu_s = msg["exit"].get("cpu_s")
                rss = msg["exit"].get("maxrss_kb")
                program_exit = True
            if "launcher_exit" in msg and not stopped and not program_exit:
                code = msg["launcher_exit"]["code"]
        out, err = (bytes(b).decode("utf-8", errors="replace") for b in buffers.values())
        return SandboxResult(
            returncode=code,
            stdout=out,
            stderr=err,
            timed_out=timed_out,
            output_truncated=truncated,
            wall_s=end - start,
            cpu_s=cpu_s,
            max_rss_kb=rss,
            isolation=frozenset(isolation),
            notes=tuple(notes),
            disk_exceeded=disk_exceeded,
        )


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
