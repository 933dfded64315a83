"""Batch supervisor: checks many programs in one sandbox, one after another, each on its own.

In a batch the namespace's init (see :mod:`~cycleqd.evaluation.sandbox.launcher`) runs :func:`serve`
instead of one program. It stays PID 1 of the sandbox's PID namespace and keeps its privileges, which
no program can reach: PID 1 ignores every signal sent from inside its namespace that it has no handler
for (``SIGKILL`` included), and it is not dumpable, so no program may trace it or open its ``/proc``
files. For each program it

1. makes a fresh folder ``<session>/work/<i>/`` with ``work/``, ``home/``, ``tmp/`` and ``support/``
   (the layout of a sandbox session);
2. forks a child that enters fresh IPC and mount namespaces with an empty private ``/tmp``, writes the
   program's files, applies the per-program limits, drops every capability and, as root, switches to
   a throwaway uid of its own (as the init of a single run does), then executes the program, or, for a
   Python program marked ``warm``, runs it in this already started interpreter instead of starting a
   new one;
3. enforces the program's wall-clock limit, keeps at most ``max_output_kb`` of each output stream, and
   when the program ends or times out kills every other process of the namespace (``kill(-1)`` from
   PID 1) and reaps them all, so that nothing survives into the next program's run;
4. optionally snapshots the working folder (:mod:`~cycleqd.evaluation.sandbox.tree`) in a helper that
   reads with the evaluating process's privileges, reports, and deletes the folder and anything else
   the program could write.

Protocol (binary frames, lengths big-endian): the evaluating process writes, on stdin, one frame per
program: lengths of header, body and stdin, then the header (JSON: index, flags), the body (JSON: argv,
environment, files) and the program's stdin. The supervisor reads a frame only when the previous
program has ended. It answers on stdout with a ``ready`` (or ``refused``) frame, then one frame per
program: lengths of header, stdout, stderr and tree, then those four.

Memory hygiene, for programs run in a fork of this interpreter: what belongs to a program (its body and
stdin, its output, its folder's snapshot) passes through this process only in byte buffers that are read
into and written from in place and zeroed afterwards, and the body is decoded in the child only. So a
program, even one that scans its own memory, finds nothing of the programs checked before it, and those
after it have not been read yet.

It uses the standard library only and must stay runnable without the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import sys
import time
from typing import Any, NoReturn, Protocol

import tree

IN_FRAME = struct.Struct(">III")  # header, body, stdin
OUT_FRAME = struct.Struct(">IIII")  # header, stdout, stderr, tree
MAX_HEADER = 1 << 16
#: Largest snapshot sent back (JSON bytes); a larger one leaves the program to a run of its own.
MAX_TREE = 8 << 20
#: Output still read after the program ended (what it wrote just before).
GRACE_S = 0.2
#: Time allowed for the processes of a program to disappear once killed.
REAP_S = 5.0
#: The folders of a session (see ``SandboxSession``) and the launcher's mount point.
SESSION_DIRS = ("work", "home", "tmp", "support", ".root")
LAYOUT = ("work", "home", "tmp", "support", ".root")


class Isolation(Protocol):
    """What the launcher provides for each program (``AnswerIsolation`` in ``launcher.py``)."""

    def enter(self) -> None:
        """Fresh IPC and mount namespaces with an empty private ``/tmp``."""

    def drop(self, rlimits: dict[str, Any], *, uid: int | None) -> None:
        """Apply the limits, drop every capability and switch to ``uid`` (when given)."""

    def reader(self) -> None:
        """Keep only the privileges the evaluating process has (for reading the working folder)."""


def serve(cfg: dict[str, Any], *, isolation: Isolation, refused: str | None = None) -> NoReturn:
    """Check the programs sent on stdin, one after another; exit when stdin ends.

    Args:
        cfg: The launcher's configuration (``root``, ``uid``, ``gid``, ``rlimits``, ``batch``).
        isolation: The per-program isolation steps.
        refused: Why this sandbox cannot run a batch (then nothing runs).
    """
    if refused is not None:
        _send({"refused": refused})
        os._exit(0)
    try:
        # Pre-warm what the Python harness needs, so that its fork starts at once.
        import ast  # noqa: F401
        import atexit  # noqa: F401
        import io  # noqa: F401
        import types  # noqa: F401

        _own_session(cfg)
        _WAKE[:] = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(_WAKE[1])
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # PID 1 receives from its namespace only the signals it handles: without root the programs
        # share its uid, so none but SIGCHLD (which only wakes it up) is handled, SIGINT included.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except BaseException as exc:
        _send({"refused": f"cannot prepare the batch: {exc}"})
        os._exit(0)
    _send({"ready": True})
    while True:
        frame = _read_frame()
        if frame is None:
            break
        header, body, stdin = frame
        report = _Report(int(header["i"]))
        try:
            _check(cfg, isolation, header, body, stdin, report)
        except BaseException as exc:
            report.header["unsettled"] = f"the supervisor failed: {type(exc).__name__}: {exc}"
            if not _reap_all():
                report.header["stop"] = "processes of a program would not die"
        finally:
            _zero(body)
            _zero(stdin)
        report.send()
        problem = _clean(cfg, report.index)
        if problem is not None or report.header.get("stop"):
            _send({"stop": problem or report.header["stop"]})
            break
    os._exit(0)


#: Read and write ends of the pipe that SIGCHLD writes to (``signal.set_wakeup_fd``).
_WAKE: list[int] = [-1, -1]


def _drain_wake() -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(_WAKE[0], 4096):
            pass


class _Report:
    """What one program did, kept in zeroable buffers until sent."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.header: dict[str, Any] = {"i": index}
        self.out = bytearray()
        self.err = bytearray()
        self.tree = bytearray()
        self.n_out = self.n_err = 0

    def send(self) -> None:
        _send(
            self.header,
            memoryview(self.out)[: self.n_out],
            memoryview(self.err)[: self.n_err],
            memoryview(self.tree),
        )
        _zero(self.out, self.n_out)
        _zero(self.err, self.n_err)
        _zero(self.tree)


# -- frames ----------------------------------------------------------------------------------------
def _read_exact(n: int) -> bytearray | None:
    """Read exactly ``n`` bytes of stdin into a new buffer (``None`` at the end of stdin)."""
    buf = bytearray(n)
    got = 0
    with memoryview(buf) as view:
        while got < n:
            k = os.readv(0, [view[got:]])
            if k == 0:
                break
            got += k
    if got < n:
        _zero(buf, got)
        return None
    return buf


def _read_frame() -> tuple[dict[str, Any], bytearray, bytearray] | None:
    lengths = _read_exact(IN_FRAME.size)
    if lengths is None:
        return None
    n_header, n_body, n_stdin = IN_FRAME.unpack(lengths)
    if n_header > MAX_HEADER:
        return None
    raw = _read_exact(n_header)
    body = _read_exact(n_body)
    stdin = _read_exact(n_stdin)
    if raw is None or body is None or stdin is None:
        return None
    return json.loads(raw), body, stdin


def _send(header: dict[str, Any], *parts: memoryview) -> None:
    raw = json.dumps(header).encode()
    chunks = [OUT_FRAME.pack(len(raw), *(len(p) for p in parts), *([0] * (3 - len(parts)))), raw, *parts]
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(1, view) :]


def _zero(buf: bytearray, used: int | None = None) -> None:
    """Overwrite the first ``used`` bytes (default: all) with zeros, then free the buffer."""
    n = len(buf) if used is None else min(used, len(buf))
    buf[:n] = bytes(n)
    del buf[:]


# -- one program -------------------------------------------------------------------------------------
def _folder(cfg: dict[str, Any], index: int) -> str:
    return os.path.join(cfg["root"], "work", str(index))


def _program_uid(cfg: dict[str, Any]) -> int | None:
    """A fresh throwaway uid for a program (as root; a single run gets one per folder too), else ``None``.

    Nothing a program leaves under its uid (kernel keyrings, say) is then its successor's.
    """
    if cfg.get("uid") is None or os.geteuid() != 0:
        return None
    low, high = cfg["batch"]["uid_range"]
    return int(low) + int.from_bytes(os.urandom(4), "little") % (int(high) - int(low))


def _make_folder(cfg: dict[str, Any], index: int, uid: int | None) -> str:
    base = _folder(cfg, index)
    os.mkdir(base, 0o711)
    os.chmod(base, 0o711)
    for name in LAYOUT:
        path = os.path.join(base, name)
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)
        if name in ("work", "home", "tmp") and uid is not None:
            os.chown(path, uid, uid)
    return base


def _check(
    cfg: dict[str, Any],
    isolation: Isolation,
    header: dict[str, Any],
    body: bytearray,
    stdin: bytearray,
    report: _Report,
) -> None:
    batch = cfg["batch"]
    cap = int(batch["max_output"])
    uid = _program_uid(cfg)
    base = _make_folder(cfg, report.index, uid)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    in_r = in_w = None
    if header.get("stdin"):
        in_r, in_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(cfg, isolation, header, body, base, uid, (in_r, out_w, err_w, status_w))
    _zero(body)
    for fd in (out_w, err_w, status_w, in_r):
        if fd is not None:
            os.close(fd)
    report.out = bytearray(cap)
    report.err = bytearray(cap)
    scratch = bytearray(65536)
    counts = {out_r: 0, err_r: 0}
    buffers = {out_r: report.out, err_r: report.err}
    status = bytearray()
    reading = {out_r, err_r, status_r}
    fed = 0
    if in_w is not None:
        os.set_blocking(in_w, False)
        if not stdin:
            os.close(in_w)
            in_w = None
    truncated = False
    deadline = start + float(batch["wall_s"])
    quota = tree.DiskQuota(base, int(batch["disk_bytes"]), start=start)
    result: tuple[int, Any] | None = None
    timed_out = disk_exceeded = False

    def read(fd: int) -> None:
        nonlocal truncated
        if fd == status_r:
            k = os.readv(fd, [scratch])
            status.extend(memoryview(scratch)[: min(k, 4096 - len(status))])
        else:
            room = cap - counts[fd]
            if room > 0:
                k = os.readv(fd, [memoryview(buffers[fd])[counts[fd] :]])
                counts[fd] += k
            else:
                k = os.readv(fd, [scratch])
                truncated = truncated or k > 0
        if k == 0:
            reading.discard(fd)
            os.close(fd)

    try:
        while result is None:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if quota.due_and_exceeded(now):
                disk_exceeded = True
                break
            # Any child's end (the program's, or an orphan's: they come to PID 1) wakes this up, so
            # orphans are reaped at once, as by a single run's init, and hold no process slot.
            writing = [in_w] if in_w is not None else []
            wait = min(deadline, quota.next_check) - now
            ready, writable, _ = select.select([*reading, _WAKE[0]], writing, [], max(0.0, wait))
            for fd in ready:
                if fd == _WAKE[0]:
                    _drain_wake()
                else:
                    read(fd)
            if in_w is not None and writable:
                try:
                    with memoryview(stdin) as view:
                        fed += os.write(in_w, view[fed : fed + 65536])
                except BlockingIOError:
                    pass
                except OSError:  # the program closed its stdin
                    fed = len(stdin)
                if fed >= len(stdin):
                    os.close(in_w)
                    in_w = None
            result = _reap(pid)
        # What it wrote since the last measurement counts too.
        disk_exceeded = disk_exceeded or (not timed_out and quota.exceeded())
        end = time.monotonic()
        # Whatever the program left running ends now, as when a single run's namespace ends.
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        grace = time.monotonic() + GRACE_S
        while reading and time.monotonic() < grace:
            ready, _, _ = select.select(list(reading), [], [], max(0.0, grace - time.monotonic()))
            for fd in ready:
                read(fd)
        if result is None:
            result = _reap(pid, block=True)
        if not _reap_all():
            report.header["stop"] = "processes of a program would not die"
    finally:
        for fd in (*reading, in_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        _zero(stdin)
        _zero(scratch)
    report.n_out, report.n_err = counts[out_r], counts[err_r]
    code: int | None = None
    usage = None
    if result is not None:
        code, usage = os.waitstatus_to_exitcode(result[0]), result[1]
    if status:
        report.header["unsettled"] = "the program could not be set up: " + status.decode(errors="replace")
    stopped = timed_out or disk_exceeded
    report.header.update(
        code=None if stopped else code,
        timed_out=timed_out,
        disk_exceeded=disk_exceeded,
        truncated=truncated,
        wall_s=end - start,
        cpu_s=(usage.ru_utime + usage.ru_stime) if usage is not None and not stopped else None,
        maxrss_kb=usage.ru_maxrss if usage is not None and not stopped else None,
    )
    if header.get("snapshot") and "unsettled" not in report.header:
        _snapshot(isolation, os.path.join(base, "work"), report)


def _reap(pid: int, *, block: bool = False) -> tuple[int, Any] | None:
    """Reap exited processes (orphans come to PID 1); the program's status once it has ended."""
    found = None
    while True:
        try:
            got, status, usage = os.wait4(-1, 0 if block and found is None else os.WNOHANG)
        except ChildProcessError:
            return found
        except InterruptedError:
            continue
        if got == 0:
            return found
        if got == pid:
            found = (status, usage)
            if block:
                return found


def _reap_all() -> bool:
    """Wait until no process but this one is left in the namespace."""
    deadline = time.monotonic() + REAP_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        except InterruptedError:
            continue
        if got == 0:
            time.sleep(0.001)
    return False


def _child(
    cfg: dict[str, Any],
    isolation: Isolation,
    header: dict[str, Any],
    body: bytearray,
    base: str,
    uid: int | None,
    fds: tuple[int | None, int, int, int],
) -> NoReturn:
    """The program's process: isolation, files, limits, then the program (as ``uid``). Never returns."""
    in_r, out_w, err_w, status_w = fds
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # As in the interpreter a single run's init is forked from (an execve makes it SIG_DFL).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.dup2(in_r if in_r is not None else os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(status_w, 3)
        os.set_inheritable(3, False)
        os.closerange(4, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 1024)
        job = json.loads(body)
        isolation.enter()
        # As in a session: helper files belong to the evaluating uid, readable only; the working
        # files to the program's uid.
        _write_files(os.path.join(base, "support"), job["support"], owner=None, mode=0o644)
        owner = (uid, uid) if uid is not None else None
        _write_files(os.path.join(base, "work"), job["files"], owner=owner, mode=None)
        os.chdir(os.path.join(base, "work"))
        rlimits = dict(cfg["rlimits"])
        if uid is not None:
            # A single run's init shares the program's uid and counts among its processes; this
            # process does not, so the program gets one process fewer to stay on the same footing.
            rlimits["NPROC"] = max(1, int(rlimits["NPROC"]) - 1)
        if header.get("warm"):
            # The fork carries this interpreter's address space; a fresh one would not.
            extra = max(0, _vm_kb() - int(cfg["batch"].get("fresh_vm_kb", 0))) * 1024
            rlimits["AS"] = int(rlimits["AS"]) + extra
        isolation.drop(rlimits, uid=uid)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(3, f"{type(exc).__name__}: {exc}".encode())
        os._exit(127)
    argv, env = job["argv"], job["env"]
    if header.get("warm"):
        os.close(3)
        _run_warm(argv, env)
    try:
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:
        try:
            os.write(2, f"sandbox: cannot start {argv[0]!r}: {exc}\n".encode())
        finally:
            os._exit(127)
    os._exit(127)


def _write_files(
    folder: str, files: dict[str, str], *, owner: tuple[int, int] | None, mode: int | None
) -> None:
    import base64

    for name, data in files.items():
        parts = [p for p in name.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts) or name.startswith("/"):
            raise ValueError(f"file name {name!r} must be a relative path inside the working folder")
        path = folder
        for part in parts[:-1]:
            path = os.path.join(path, part)
            if not os.path.isdir(path):
                os.mkdir(path)
                if owner is not None:
                    os.chown(path, *owner)
        path = os.path.join(path, parts[-1])
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
        if owner is not None:
            os.chown(path, *owner)
        if mode is not None:
            os.chmod(path, mode)


def _vm_kb() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _run_warm(argv: list[str], env: dict[str, str]) -> NoReturn:
    """Run ``python -I SCRIPT ARGS`` in this (forked) interpreter, as a fresh one would. Never returns.

    What a fresh interpreter does that matters to a program is done here: the environment and
    ``sys.argv``, ``site`` (site-packages, ``.pth`` files, ``exit`` and ``help``), a fresh ``__main__``
    module, and at the end: waiting for threads, ``atexit`` handlers and flushing the standard streams
    (exit status 120 if that fails), SystemExit and uncaught exceptions as the interpreter reports them.
    """
    import builtins
    import importlib.machinery
    import types

    script = argv[2]
    path = os.path.join(os.getcwd(), script)
    try:
        os.environ.clear()
        os.environ.update(env)
        sys.argv = list(argv[2:])
        sys.orig_argv = list(argv)
        # What the launcher added to load this module is not the program's: its folder on the path
        # and the modules' plain names (a program's ``import tree`` must find what it would find).
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path[:] = [p for p in sys.path if p != here]
        for name in ("supervisor", "tree"):
            sys.modules.pop(name, None)
        sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)
        import site

        site.main()
        main = types.ModuleType("__main__")
        main.__file__ = path
        main.__cached__ = None
        main.__builtins__ = builtins
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
        sys.modules["__main__"] = main
    except BaseException as exc:
        try:
            os.write(2, f"sandbox: cannot start {argv[0]!r}: {exc}\n".encode())
        finally:
            os._exit(127)
    try:
        with open(path, "rb") as fh:
            source = fh.read()
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"{argv[0]}: can't open file {path!r}: [Errno {exc.errno}] {exc.strerror}\n".encode())
        os._exit(2)
    status = _run_main(source, path, main.__dict__)
    os._exit(_finalize(status))


def _run_main(source: bytes, path: str, namespace: dict[str, Any]) -> int:
    try:
        exec(compile(source, path, "exec"), namespace)
        return 0
    except SystemExit as exc:
        return _exit_status(exc)
    except BaseException as exc:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        with contextlib.suppress(BaseException):
            sys.excepthook(type(exc), exc, tb)
        if isinstance(exc, KeyboardInterrupt):
            return -signal.SIGINT
        return 1


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(BaseException):
        print(code, file=sys.stderr)
    return 1


def _finalize(status: int) -> int:
    threading = sys.modules.get("threading")
    if threading is not None:
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]
    import atexit

    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            if status == 0:
                status = 120
    if status < 0:
        # Ended by a signal, as the interpreter does after an uncaught KeyboardInterrupt.
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


# -- snapshot and cleaning ---------------------------------------------------------------------------
def _snapshot(isolation: Isolation, folder: str, report: _Report) -> None:
    """Snapshot the working folder in a helper process that reads as the evaluating process would."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            isolation.reader()
            data = memoryview(json.dumps(tree.snapshot(folder)).encode())
            while data:
                data = data[os.write(w, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    scratch = bytearray(65536)
    deadline = time.monotonic() + REAP_S + 30.0
    too_big = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                continue
            k = os.readv(r, [scratch])
            if k == 0:
                break
            if len(report.tree) + k > MAX_TREE:
                too_big = True
                break
            report.tree += memoryview(scratch)[:k]
        else:
            too_big = True
    finally:
        os.close(r)
        _zero(scratch)
    if too_big:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if too_big or status != 0:
        _zero(report.tree)
        report.header["unsettled"] = "the working folder could not be snapshotted here"


def _own_session(cfg: dict[str, Any]) -> None:
    """Take the session's folders back from the program's uid: it gets only its own folder each time."""
    if os.geteuid() != 0:
        return
    root = cfg["root"]
    for name in ("work", "home", "tmp"):
        path = os.path.join(root, name)
        os.chown(path, 0, 0)
        os.chmod(path, 0o711 if name == "work" else 0o700)


def _clean(cfg: dict[str, Any], index: int) -> str | None:
    """Delete the program's folder and anything else it could write; ``None`` when all is clean."""
    root = cfg["root"]
    try:
        tree.remove_tree(_folder(cfg, index))
        with os.scandir(root) as it:
            entries = list(it)
        for entry in entries:
            if entry.name in SESSION_DIRS and entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as inner:
                    for path in [e.path for e in inner]:
                        tree.remove_tree(path)
            else:
                tree.remove_tree(entry.path)
        for name in ("work", "home", "tmp", "support"):
            path = os.path.join(root, name)
            if not os.path.isdir(path) or os.path.islink(path):
                os.mkdir(path, 0o711)
            if os.listdir(path):
                return f"cannot empty {path}"
    except OSError as exc:
        return f"cannot clean the session folder: {exc}"
    return None
