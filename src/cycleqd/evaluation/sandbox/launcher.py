"""Sandbox launcher: sets up the isolation, then runs the untrusted program.

This file is executed as a script (``python -I -S launcher.py CONFIG``) in a fresh, single-threaded
process that :class:`~cycleqd.evaluation.sandbox.Sandbox` starts in a new session. Doing the set-up
here rather than in a ``preexec_fn`` keeps it out of the (multi-threaded) parent: namespaces can only
be entered by a single-threaded process, and a fork of a threaded parent may deadlock on locks that
other threads held. It uses the standard library only and must stay runnable without the package.

Steps, each best effort, with what took effect written to the report pipe as JSON lines:

1. join the cgroups the parent prepared (process count and memory of the whole sandbox);
2. ``unshare`` new mount, PID, network, IPC and UTS namespaces (in a new user namespace when not
   root, which is what lets an unprivileged user create the others);
3. build a minimal root file system on a tmpfs: the system folders and the Python installation bound
   read-only, the sandbox folder bound writable, a private ``/tmp``, a ``/dev`` with only the
   harmless devices; move it onto ``/`` and ``chroot`` into it (``nosuid`` everywhere);
4. fork the namespace's init (PID 1): a fresh read-only ``/proc``, resource limits, an empty
   capability bounding set, ``no_new_privs``, a throwaway uid when the launcher runs as root, killed
   when the launcher dies;
5. the init runs the program as its child, reaps orphans, and when the program ends reports its exit
   status, peak memory and CPU time and exits, which kills what is left in the namespace.

For a batch (``batch`` in the configuration) the init runs :mod:`supervisor` instead, which checks the
programs sent on stdin one after another, each on its own (see that module).
"""

from __future__ import annotations

import os


def _vm_kb() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# The address space of an interpreter that has just started (measured before the imports below): a
# program of a batch run in a fork of the supervisor gets what the supervisor holds beyond it on top
# of its memory limit, as if it had started afresh.
_FRESH_VM_KB = _vm_kb()

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import errno  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
# Per-mount flags that statvfs reports under the same values as the MS_* constants.
_KEEP_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | 0x400 | 0x800 | 0x200000

SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added to the generic table in 5.12)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

DEVICES = ("null", "zero", "full", "random", "urandom")

_RLIMITS = {
    "CPU": resource.RLIMIT_CPU,
    "AS": resource.RLIMIT_AS,
    "NPROC": resource.RLIMIT_NPROC,
    "FSIZE": resource.RLIMIT_FSIZE,
    "NOFILE": resource.RLIMIT_NOFILE,
    "CORE": resource.RLIMIT_CORE,
}


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_libc = ctypes.CDLL(None, use_errno=True)
#: The batch supervisor module, loaded (before the root changes) when the configuration asks for a
#: batch. (No ``typing`` here: every sandboxed run starts this script, and that import costs.)
_SUPERVISOR = None


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _mount_setattr(path: str, *, recursive: bool, attr_set: int = 0, attr_clr: int = 0) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    ret = _libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        path.encode(),
        ctypes.c_uint(AT_RECURSIVE if recursive else 0),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, f"mount_setattr {path}")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            # Field 5 is the mount point, with blanks written as octal escapes.
            points.append(line.split()[4].encode().decode("unicode_escape"))
    return points


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _unshare(cfg: dict, report: dict) -> int:
    """Enter new namespaces; return the flags that took effect (0 when none could be created)."""
    base = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if not cfg["network"]:
        base |= CLONE_NEWNET
    user = CLONE_NEWUSER if os.geteuid() != 0 else 0
    attempts = [base | user]
    if not cfg["network"]:
        attempts.append(CLONE_NEWNET | user)  # at least the network, where the rest is refused
    uid, gid = os.geteuid(), os.getegid()
    for flags in attempts:
        if _libc.unshare(ctypes.c_int(flags)) == 0:
            if flags & CLONE_NEWUSER:
                # Map our own ids to themselves: the only mapping an unprivileged process may write.
                # Should that be refused, we stay in the namespaces (failing closed: unmapped, the
                # program can write nothing of the user's) and say so.
                try:
                    with contextlib.suppress(FileNotFoundError):
                        _write("/proc/self/setgroups", "deny")
                    _write("/proc/self/uid_map", f"{uid} {uid} 1")
                    _write("/proc/self/gid_map", f"{gid} {gid} 1")
                except OSError as exc:
                    report["notes"].append(f"cannot map ids in the user namespace: {exc}")
            return flags
        report["notes"].append(f"unshare({flags:#x}) refused: {os.strerror(ctypes.get_errno())}")
    return 0


def _bind(host: str, new_root: str) -> None:
    """Expose ``host`` at the same path under ``new_root`` (symlinks are recreated, not followed)."""
    target = new_root + host
    if os.path.islink(host):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            os.symlink(os.readlink(host), target)
        return
    if os.path.isdir(host):
        os.makedirs(target, exist_ok=True)
    elif os.path.exists(host):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            with open(target, "w"):
                pass
    else:
        return
    _mount(host, target, None, MS_BIND | MS_REC)


def _build_root(cfg: dict, report: dict) -> None:
    """Build the minimal root, switch into it and make everything but the sandbox folder read-only."""
    base = cfg["root"]
    new_root = os.path.join(base, ".root")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    os.makedirs(new_root, exist_ok=True)
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    # The private /tmp (tmpfs) first: folders to expose and the sandbox folder may lie under the
    # host's /tmp, and their mount points must be made inside it.
    os.makedirs(new_root + "/tmp", exist_ok=True)
    _mount("tmpfs", new_root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmp_bytes']},mode=1777")
    for path in cfg["binds"]:
        if not (path == base or path.startswith(base + "/")):
            _bind(path, new_root)
    os.makedirs(new_root + base, exist_ok=True)
    _mount(base, new_root + base, None, MS_BIND)
    dev = new_root + "/dev"
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            with open(f"{dev}/{name}", "w"):
                pass
            _mount("/dev/" + name, f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(new_root + "/proc", exist_ok=True)
    # The mounts of the new root, as they will be named inside it (/proc is empty once inside).
    inside = [
        p[len(new_root) :] or "/" for p in _mount_points() if p == new_root or p.startswith(new_root + "/")
    ]
    os.chdir(new_root)
    _mount(new_root, "/", None, MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    report["isolation"].append("minimal-root")

    if cfg.get("mount_api", "auto") != "legacy":
        try:
            _mount_setattr("/", recursive=True, attr_set=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
            for writable in (base, "/tmp"):
                _mount_setattr(writable, recursive=False, attr_clr=MOUNT_ATTR_RDONLY)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
                raise
            report["notes"].append(f"mount_setattr unavailable ({exc}); remounting mounts one by one")
    # Older kernels: a read-only remount of each mount, keeping the flags it was locked with.
    for point in inside:
        try:
            flags = (os.statvfs(point).f_flag & _KEEP_FLAGS) | MS_BIND | MS_REMOUNT | MS_NOSUID
        except OSError:
            continue
        flags = flags & ~MS_RDONLY if point in (base, "/tmp") else flags | MS_RDONLY
        _mount(None, point, None, flags)


def _drop_capabilities() -> bool:
    """Empty the bounding set (so that no execve grants a capability) and set ``no_new_privs``."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="utf-8") as fh:
            last = int(fh.read())
    except (OSError, ValueError):
        last = 40
    ok = True
    for cap in range(last + 1):
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            ok = False
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
        ok = False
    return ok


def _clear_capabilities() -> bool:
    """Empty the effective, permitted and inheritable capability sets of this process."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    return _libc.capset(ctypes.byref(header), data) == 0


class AnswerIsolation:
    """What each program of a batch gets on top of the batch's sandbox (the supervisor calls it).

    Args:
        cfg: The launcher's configuration.
    """

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg

    def enter(self) -> None:
        """Fresh IPC and mount namespaces and an empty private ``/tmp``: nothing a program before left."""
        _check(_libc.unshare(ctypes.c_int(CLONE_NEWIPC | CLONE_NEWNS)), "unshare")
        # What is mounted under /tmp (the session folder, when it lies in the host's /tmp) is kept
        # through the fresh /tmp: reached by descriptors opened before it is covered, bound again.
        below = sorted({p for p in _mount_points() if p.startswith("/tmp/")}, key=lambda p: p.count("/"))
        kept = [(p, os.open(p, os.O_PATH)) for p in below]
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={self.cfg['tmp_bytes']},mode=1777")
        for path, fd in kept:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "a"):
                    pass
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
            os.close(fd)

    def drop(self, rlimits: dict, *, uid: int | None) -> None:
        """What the init of a single run gives its program: limits, no capabilities, a throwaway uid.

        Args:
            rlimits: The limits (as :meth:`SandboxLimits.rlimits` gives them).
            uid: The program's throwaway uid (as root), or ``None`` to keep this process's.

        Raises:
            OSError: When a step fails (the program must then not run).
        """
        _set_rlimits(rlimits)
        if not _drop_capabilities():
            raise OSError("cannot empty the capability bounding set")
        if os.geteuid() == 0 and uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        if not _clear_capabilities():
            raise OSError("cannot drop the capabilities")
        # As an executed program would be (changing uid made this process undumpable).
        _libc.prctl(PR_SET_DUMPABLE, ctypes.c_ulong(1), 0, 0, 0)
        _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)

    def reader(self) -> None:
        """Read a working folder as the evaluating process would: as root with root's reach, else none."""
        if os.geteuid() != 0 and not _clear_capabilities():
            raise OSError("cannot drop the capabilities")


def _serve_batch(cfg: dict, flags: int, report_fd: int) -> None:
    """The namespace's init for a batch: the supervisor, which keeps its privileges. Never returns."""
    refused = None
    try:
        report: dict = {"isolation": [], "notes": []}
        if flags & CLONE_NEWPID:
            try:
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
                report["isolation"].append("procfs")
            except OSError as exc:
                report["notes"].append(f"cannot mount a fresh /proc ({exc})")
        # Programs are kept apart by killing everything of the PID namespace after each, and their
        # files by the read-only root: without these the programs must run one sandbox each.
        have = set(cfg["_launcher_isolation"]) | set(report["isolation"])
        missing = sorted({"pidns", "procfs", "minimal-root", "readonly-fs"} - have)
        if missing:
            refused = "the sandbox lacks " + ", ".join(missing)
        os.chdir("/")
        _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
        # Not dumpable: no program may trace this process or open its /proc files.
        _libc.prctl(PR_SET_DUMPABLE, ctypes.c_ulong(0), 0, 0, 0)
        cfg["batch"]["fresh_vm_kb"] = _FRESH_VM_KB
        os.write(report_fd, (json.dumps({"child": report}) + "\n").encode())
        os.close(report_fd)
    except BaseException as exc:
        refused = f"cannot start the batch: {exc}"
    _SUPERVISOR.serve(cfg, isolation=AnswerIsolation(cfg), refused=refused)
    os._exit(0)


def _can_run_as(uid: int, gid: int, program: str, env: dict) -> bool:
    """Whether ``uid`` could execute ``program`` (checked with the effective ids, then restored)."""
    path = program
    if "/" not in program:
        for folder in env.get("PATH", "").split(":"):
            if os.path.exists(os.path.join(folder, program)):
                path = os.path.join(folder, program)
                break
    os.setegid(gid)
    os.seteuid(uid)
    try:
        return os.access(path, os.X_OK, effective_ids=True) and os.access(path, os.R_OK, effective_ids=True)
    finally:
        os.seteuid(0)
        os.setegid(0)


def _child(cfg: dict, flags: int, report_fd: int) -> None:
    """The namespace's init: finish the isolation, run the program, report how it ended. Never returns."""
    if cfg.get("batch"):
        _serve_batch(cfg, flags, report_fd)
    try:
        report: dict = {"isolation": [], "notes": []}
        env = dict(cfg["env"])
        if flags & CLONE_NEWPID:
            try:
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
                report["isolation"].append("procfs")
            except OSError as exc:
                report["notes"].append(f"cannot mount a fresh /proc ({exc}); /proc stays empty")
        if "minimal-root" in cfg["_launcher_isolation"]:
            env["TMPDIR"] = "/tmp"
        os.chdir(cfg["cwd"])
        _set_rlimits(cfg["rlimits"])
        if _drop_capabilities():
            report["isolation"].append("no-capabilities")
        uid = cfg.get("uid")
        if os.geteuid() == 0 and uid is not None:
            gid = cfg["gid"]
            if "minimal-root" in cfg["_launcher_isolation"] or _can_run_as(uid, gid, cfg["argv"][0], env):
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                report["isolation"].append("unprivileged-uid")
            else:
                report["notes"].append(
                    f"{cfg['argv'][0]} is not readable by an unprivileged user; the program keeps root's uid"
                )
        # After the uid change, which resets it: this process dies with the launcher.
        _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
        os.write(report_fd, (json.dumps({"child": report}) + "\n").encode())
    except BaseException as exc:
        try:
            os.write(2, f"sandbox: cannot start {cfg['argv'][0]!r}: {exc}\n".encode())
        finally:
            os._exit(127)
    # This process stays as the namespace's init (PID 1, which the kernel shields from signals it
    # does not handle) and runs the program as an ordinary process, so that the program's signals
    # behave as usual; it reaps orphans and, when the program ends, exits, which kills whatever the
    # program left behind in the namespace.
    program = os.fork()
    if program == 0:
        try:
            os.close(report_fd)
            _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
            os.execvpe(cfg["argv"][0], cfg["argv"], env)
        except BaseException as exc:
            try:
                os.write(2, f"sandbox: cannot start {cfg['argv'][0]!r}: {exc}\n".encode())
            finally:
                os._exit(127)
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(127)
        if pid == program:
            break
    code = os.waitstatus_to_exitcode(status)
    final = {"exit": {"code": code, "maxrss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}}
    with contextlib.suppress(OSError):
        os.write(report_fd, (json.dumps(final) + "\n").encode())
    os._exit(code if code >= 0 else 128 - code)


def _set_rlimits(limits: dict) -> None:
    for name, value in limits.items():
        soft, hard = value if isinstance(value, list) else (value, value)
        resource.setrlimit(_RLIMITS[name], (soft, hard))


def main() -> None:
    """Set up the sandbox, run the program, report, and exit with the program's status."""
    cfg = json.loads(sys.argv[1])
    # Die with the evaluating process (its init, PID 1 of the namespace, dies with this one and takes
    # every process there along); if it died before this line, stop now.
    _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
    if cfg.get("parent") is not None and os.getppid() != cfg["parent"]:
        os._exit(125)
    # A deadline of its own: should the evaluating process hang (or be stopped) past the run's limits,
    # the launcher kills its whole process group, itself included; its init and namespace go with it.
    if cfg.get("deadline_s"):
        signal.signal(signal.SIGALRM, lambda *_: os.killpg(0, signal.SIGKILL))
        signal.alarm(max(1, int(cfg["deadline_s"] + 0.999)))
    if cfg.get("batch"):
        global _SUPERVISOR
        # Loaded now: this folder is not part of the sandbox's root. (No bytecode written next to it.)
        sys.dont_write_bytecode = True
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import supervisor

        _SUPERVISOR = supervisor
    report_fd = cfg["report_fd"]
    report: dict = {"isolation": ["session", "rlimits", "scrubbed-env", "private-folder"], "notes": []}
    for group in cfg.get("cgroups", []):
        try:
            _write(group["procs"], str(os.getpid()))
            report["isolation"].append(group["name"])
        except OSError as exc:
            report["notes"].append(f"cannot join {group['procs']}: {exc}")
    flags = 0
    if cfg["namespaces"]:
        try:
            flags = _unshare(cfg, report)
        except OSError as exc:
            report["notes"].append(f"namespaces unavailable: {exc}")
    names = {
        CLONE_NEWUSER: "userns",
        CLONE_NEWNET: "netns",
        CLONE_NEWPID: "pidns",
        CLONE_NEWIPC: "ipcns",
        CLONE_NEWUTS: "utsns",
    }
    report["isolation"].extend(name for bit, name in names.items() if flags & bit)
    if flags & CLONE_NEWNS:
        try:
            _build_root(cfg, report)
            report["isolation"].append("readonly-fs")
        except OSError as exc:
            report["notes"].append(f"cannot build the read-only root: {exc}")
    cfg["_launcher_isolation"] = report["isolation"]
    os.write(report_fd, (json.dumps({"launcher": report}) + "\n").encode())

    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the deadline is the launcher's alone
        _child(cfg, flags, report_fd)
    # The launcher only waits. A timeout kills the whole session; should the launcher die first (with
    # the evaluating process, say), its child gets SIGKILL (PDEATHSIG) and, as PID 1 of the namespace,
    # takes every process there along. What lies outside the namespace is the warden's (warden.py).
    while True:
        try:
            _, status, _ = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):
        os.write(report_fd, (json.dumps({"launcher_exit": {"code": code}}) + "\n").encode())
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
