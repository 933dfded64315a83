"""What a sandboxed run may use and what it did: limits, results, isolation names (plain data)."""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass

from cycleqd.errors import CycleQDError

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
