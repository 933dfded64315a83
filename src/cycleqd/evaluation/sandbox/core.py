"""Running untrusted programs (what a model wrote) in a contained process.

Everything a model writes that gets executed (Python, SQL, shell) goes through :class:`Sandbox`. The
parent only prepares a folder, starts :mod:`~cycleqd.evaluation.sandbox.launcher` in a new session and
watches the clock and the output; the launcher does the isolation (see its docstring and
``docs/sandbox.md``). Several programs can share one sandboxed run, each still on its own
(:mod:`~cycleqd.evaluation.sandbox.batch`). The standard library is all this needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from cycleqd.evaluation.sandbox.cgroup import CgroupSet, create_cgroups
from cycleqd.evaluation.sandbox.folder import _UID_RANGE, _chown_tree, _kill_uid, _safe_relpath, write_files
from cycleqd.evaluation.sandbox.limits import (
    IsolationReport,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
)
from cycleqd.evaluation.sandbox.tree import remove_tree
from cycleqd.evaluation.sandbox.warden import warden
from cycleqd.evaluation.sandbox.watch import Launched, RunWatch

LAUNCHER = Path(__file__).with_name("launcher.py")
SYSTEM_BINDS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
PATH = "/usr/local/bin:/usr/bin:/bin"
#: Seconds a launcher outlives its run's limits before it kills its sandbox itself (should the
#: evaluating process, which enforces them, hang or be stopped).
LAUNCHER_MARGIN_S = 5.0


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
            return RunWatch(run, limits, root=session.root, uid=session.uid).result(stdin)
        finally:
            run.remove_cgroups()
