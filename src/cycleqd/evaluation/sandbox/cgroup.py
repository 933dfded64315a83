"""Per-sandbox cgroups, where the caller may create them (usually as root).

They give a hard cap on the number of processes and on the memory of the whole sandbox, and a reliable
list of its processes to kill.

Each sandbox gets a child of the cgroup the caller itself is in, so its usage still counts against any
limit placed on the caller. cgroup v1 (one hierarchy per controller) and v2 (unified) are supported.
Standard library only: the warden loads this file by path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def kill_until_gone(find: Callable[[], list[int]], *, timeout: float) -> None:
    """SIGKILL the processes ``find`` names until it names none (or ``timeout`` seconds pass).

    Args:
        find: Lists the processes still to kill.
        timeout: Give up after this long (processes that will not die, pids reused meanwhile).
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = find()
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


@dataclass
class CgroupSet:
    """The cgroups of one sandbox run.

    Attributes:
        dirs: Controller name (``pids``, ``memory``) → cgroup folder.
    """

    dirs: dict[str, Path] = field(default_factory=dict)

    def join_spec(self) -> list[dict[str, str]]:
        """What the launcher needs to join each cgroup: its name and ``cgroup.procs`` path."""
        return [{"name": f"cgroup-{name}", "procs": str(d / "cgroup.procs")} for name, d in self.dirs.items()]

    def pids(self) -> set[int]:
        """Processes currently in any of the cgroups."""
        found: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return found

    def kill_all(self, *, timeout: float = 2.0) -> None:
        """SIGKILL every process in the cgroups until none is left (or ``timeout`` passes)."""
        kill_until_gone(lambda: list(self.pids()), timeout=timeout)

    def remove(self) -> None:
        """Kill what is left and delete the cgroups."""
        self.kill_all()
        for d in self.dirs.values():
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the last processes are still being reaped
        self.dirs.clear()


def _own_cgroups() -> tuple[dict[str, str], str | None]:
    """The caller's cgroup path per v1 controller, and its v2 path (``None`` without v2)."""
    v1: dict[str, str] = {}
    v2 = None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return v1, v2
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for c in controllers.split(","):
            if c:
                v1[c] = path
    return v1, v2


def _mounts() -> tuple[dict[str, Path], Path | None]:
    """Mount points of the v1 controller hierarchies and of the v2 hierarchy."""
    v1: dict[str, Path] = {}
    v2 = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return v1, v2
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        point = Path(fields[4])
        if rfields[0] == "cgroup2":
            v2 = point
        elif rfields[0] == "cgroup":
            for opt in rfields[2].split(","):
                if opt in ("pids", "memory"):
                    v1[opt] = point
    return v1, v2


def create_cgroups(*, max_processes: int, memory_bytes: int) -> tuple[CgroupSet, list[str]]:
    """Create the sandbox's cgroups where the system lets us.

    Args:
        max_processes: Most processes (and threads) alive at once in the sandbox.
        memory_bytes: Most memory used by the whole sandbox.

    Returns:
        The cgroups made (possibly none), and notes on what could not be made.
    """
    notes: list[str] = []
    found = CgroupSet()
    own_v1, own_v2 = _own_cgroups()
    mounts_v1, mount_v2 = _mounts()
    name = f"cycleqd-sandbox-{uuid.uuid4().hex[:12]}"
    limits = {
        "pids": {"v1": [("pids.max", str(max_processes))], "v2": [("pids.max", str(max_processes))]},
        "memory": {
            "v1": [
                ("memory.limit_in_bytes", str(memory_bytes)),
                ("memory.memsw.limit_in_bytes", str(memory_bytes)),
            ],
            "v2": [("memory.max", str(memory_bytes)), ("memory.swap.max", "0")],
        },
    }
    for controller, files in limits.items():
        if controller in mounts_v1 and controller in own_v1:
            parent = mounts_v1[controller] / own_v1[controller].lstrip("/")
            version = "v1"
        elif mount_v2 is not None and own_v2 is not None:
            parent = mount_v2 / own_v2.lstrip("/")
            version = "v2"
            try:
                enabled = (parent / "cgroup.subtree_control").read_text().split()
            except OSError:
                enabled = []
            if controller not in enabled:
                notes.append(f"no {controller} cgroup: the controller is not enabled below {parent}")
                continue
        else:
            notes.append(f"no {controller} cgroup: the controller is not mounted")
            continue
        d = parent / name
        try:
            d.mkdir()
        except OSError as exc:
            notes.append(f"no {controller} cgroup: cannot create {d} ({exc.strerror})")
            continue
        required, *optional = files[version]
        try:
            (d / required[0]).write_text(required[1])
        except OSError as exc:
            notes.append(f"no {controller} cgroup: cannot write {required[0]} ({exc.strerror})")
            with contextlib.suppress(OSError):
                d.rmdir()
            continue
        for fname, value in optional:
            with contextlib.suppress(OSError):
                (d / fname).write_text(value)
        found.dirs[controller] = d
    return found, notes
