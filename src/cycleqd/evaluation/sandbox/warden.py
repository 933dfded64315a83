"""The warden: what the sandboxes of a process leave behind is cleaned up when that process dies.

The evaluating process enforces each sandbox's wall clock and removes its cgroups and folder when the
run ends. Killed itself (``SIGKILL``, the OOM killer, a ``SIGTERM`` it does not handle), it can do
neither: the program would run on without a limit and its cgroups and folders would stay. So every
process that starts sandboxes starts one warden first: a small process of its own session (so the
terminal's Ctrl-C does not reach it) that reads, on a pipe from its parent, which process groups,
cgroups, throwaway uids and folders are in use. It holds no other work. When the pipe reaches its end
(the parent exited, however it died, since the kernel closes its descriptors) the warden kills what
is still registered, removes its cgroups and folders, and exits.

The launcher also dies with its parent (``PR_SET_PDEATHSIG``) and takes the sandbox's PID namespace
with it; the warden is what covers the rest (cgroups, folders, processes outside a PID namespace).

This file is both the warden's program (``python -I -S warden.py``, standard library only, like the
launcher) and the client (:func:`warden`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))

try:
    from cycleqd.evaluation.sandbox.cgroup import CgroupSet, kill_until_gone
    from cycleqd.evaluation.sandbox.tree import remove_tree
except ImportError:  # run as the warden's program, without the package: the sibling files by path
    sys.path.insert(0, _HERE)
    from cgroup import CgroupSet, kill_until_gone  # type: ignore[no-redef]
    from tree import remove_tree  # type: ignore[no-redef]


# -- the warden's program ----------------------------------------------------------------------------


def uid_pids(uid: int) -> list[int]:
    """The processes running as ``uid`` (its real uid, read in ``/proc``)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry.name))
                        break
        except (OSError, ValueError):
            continue
    return found


def clean_up(entries: Iterable[dict]) -> None:
    """Kill the processes the entries name (groups, cgroups, uids), then remove cgroups and folders.

    Args:
        entries: Registered resources, each with any of ``pgid``, ``cgroups`` (folders), ``uid``,
            ``folder``.
    """
    entries = list(entries)
    for entry in entries:
        if entry.get("pgid"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(entry["pgid"], signal.SIGKILL)
    uids = [e["uid"] for e in entries if e.get("uid") is not None]
    kill_until_gone(lambda: [p for uid in uids for p in uid_pids(uid)], timeout=5.0)
    for entry in entries:
        CgroupSet(dirs={str(i): Path(cg) for i, cg in enumerate(entry.get("cgroups", ()))}).remove()
    for entry in entries:
        if entry.get("folder"):
            remove_tree(entry["folder"])


def main() -> None:
    """Read registrations on stdin until it ends, then clean up what is still registered."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    held: dict[str, dict] = {}
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "add" in msg:
            held[str(msg["add"])] = msg.get("what", {})
        elif "drop" in msg:
            entry = held.get(str(msg["drop"]), {})
            for key in msg.get("keys") or list(entry):
                entry.pop(key, None)
            if not entry:
                held.pop(str(msg["drop"]), None)
    clean_up(held.values())


# -- the client --------------------------------------------------------------------------------------


class Warden:
    """The handle of this process's warden (use :func:`warden`).

    Registrations are written to the warden's stdin; they cost a pipe write each.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = -1
        self._next = 0

    def _send(self, msg: dict) -> None:
        """Write one line to the warden, starting it first in a new process (or after a fork)."""
        with self._lock:
            if self._proc is None or self._pid != os.getpid() or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", os.path.join(_HERE, "warden.py")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
                self._pid = os.getpid()
            assert self._proc.stdin is not None
            self._proc.stdin.write((json.dumps(msg) + "\n").encode())
            self._proc.stdin.flush()

    def watch(
        self,
        *,
        pgid: int | None = None,
        cgroups: Iterable[str | os.PathLike[str]] = (),
        uid: int | None = None,
        folder: str | os.PathLike[str] | None = None,
    ) -> str:
        """Register resources to be cleaned up should this process die before it releases them.

        Args:
            pgid: A process group to kill (register it before the group's leader can be reaped).
            cgroups: Cgroup folders whose processes are killed and which are then removed.
            uid: A throwaway uid whose processes are killed.
            folder: A folder to remove.

        Returns:
            The token that :meth:`release` takes.
        """
        what: dict[str, object] = {}
        if pgid is not None:
            what["pgid"] = pgid
        if cgroups:
            what["cgroups"] = [os.fspath(c) for c in cgroups]
        if uid is not None:
            what["uid"] = uid
        if folder is not None:
            what["folder"] = os.fspath(folder)
        with self._lock:
            self._next += 1
            token = f"{os.getpid()}-{self._next}"
        if what:
            self._send({"add": token, "what": what})
        return token

    def release(self, token: str, *keys: str) -> None:
        """Forget resources that were cleaned up (or are about to be, by this process).

        Args:
            token: What :meth:`watch` returned.
            *keys: Only these parts (``pgid``, ``cgroups``, ``uid``, ``folder``); none: all of them.
        """
        with contextlib.suppress(OSError, ValueError):
            self._send({"drop": token, "keys": list(keys)})

    @property
    def pid(self) -> int | None:
        """The warden's process id (``None`` before the first registration)."""
        return self._proc.pid if self._proc is not None and self._pid == os.getpid() else None


_WARDEN = Warden()


def warden() -> Warden:
    """This process's warden (started on the first registration, again in a forked child)."""
    return _WARDEN


if __name__ == "__main__":
    main()
