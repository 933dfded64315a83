"""The sandbox, with ordinary and hostile programs.

Each hostile program must end as a failed run (or a harmless one) while this process and the machine are
unharmed: no stray processes, files outside the working folder intact, no secret or network reached.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hostile import listener, processes_with

from cycleqd.evaluation.sandbox import Sandbox, SandboxLimits, SandboxUnavailableError

HOSTILE = SandboxLimits(wall_s=3, cpu_s=1, memory_mb=256, max_processes=16, max_file_mb=2)


def has_process_cap(sb: Sandbox) -> bool:
    """Whether the number of sandboxed processes is bounded on this machine."""
    active = sb.probe().active
    return os.geteuid() != 0 or bool({"cgroup-pids", "unprivileged-uid"} & active)


@pytest.fixture
def hostile() -> Sandbox:
    return Sandbox(HOSTILE)


# -- ordinary use -------------------------------------------------------------------------------------
def test_runs_a_program_with_files_and_stdin(sandbox: Sandbox) -> None:
    code = "import sys\nprint(open('in.txt').read().strip(), sys.stdin.read().strip())"
    r = sandbox.run_python(code, files={"in.txt": "from-file\n"}, stdin="from-stdin")
    assert r.ok, r.stderr
    assert r.stdout.strip() == "from-file from-stdin"
    assert r.failure() is None


def test_reports_exit_status_and_stderr(sandbox: Sandbox) -> None:
    r = sandbox.run_python("import sys\nprint('bad thing', file=sys.stderr)\nsys.exit(3)")
    assert r.returncode == 3
    assert not r.ok
    assert r.failure() == "exit status 3: bad thing"


def test_working_folder_is_fresh_and_removed(sandbox: Sandbox) -> None:
    r1 = sandbox.run_python("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())")
    r2 = sandbox.run_python("import os\nprint(sorted(os.listdir('.')), os.getcwd())")
    assert r1.ok
    assert r2.ok
    assert "left.txt" not in r2.stdout
    assert r1.stdout.strip() != r2.stdout.split()[-1]
    assert not Path(r1.stdout.strip()).exists()


def test_environment_is_scrubbed(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYCLEQD_PARENT_ONLY", "1")
    r = sandbox.run_python("import os\nprint(sorted(os.environ))")
    names = eval(r.stdout)
    assert "CYCLEQD_PARENT_ONLY" not in names
    assert set(names) <= {
        "PATH",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
    }


def test_output_is_capped(sandbox: Sandbox) -> None:
    limits = sandbox.limits.replace(max_output_kb=64)
    r = sandbox.run_python("import sys\nfor _ in range(200): sys.stdout.write('x' * 10000)", limits=limits)
    assert r.output_truncated
    assert len(r.stdout) == 64 * 1024


def test_session_keeps_its_folder_across_runs(sandbox: Sandbox) -> None:
    with sandbox.session(files={"a.txt": "1\n"}) as s:
        assert s.run(["bash", "-c", "echo 2 >> a.txt"]).ok
        r = s.run(["bash", "-c", "cat a.txt"])
        assert r.stdout.split() == ["1", "2"]
        assert s.read_file("a.txt") == b"1\n2\n"
        root = s.root
    assert not root.exists()


def test_read_file_does_not_follow_symlinks(sandbox: Sandbox) -> None:
    with sandbox.session() as s:
        assert s.run(["bash", "-c", "ln -s /etc/hostname link && mkdir d && ln -s /etc d2"]).ok
        assert s.read_file("link") is None
        assert s.read_file("d2/hostname") is None


def test_file_names_must_stay_inside(tmp_path: Path) -> None:
    sb = Sandbox(HOSTILE, base_dir=tmp_path)
    with pytest.raises(ValueError, match="relative path"):
        sb.run(["true"], files={"../escape.txt": "x"})
    with pytest.raises(ValueError, match="relative path"):
        sb.run(["true"], files={"/etc/escape.txt": "x"})
    assert list(tmp_path.iterdir()) == []  # no folder left behind


def test_no_folder_is_left_behind(tmp_path: Path) -> None:
    sb = Sandbox(HOSTILE, base_dir=tmp_path)
    r = sb.run_python("import os\nos.makedirs('a/b/c')\nos.chmod('a/b', 0)\nos.chmod('a', 0o500)")
    assert r.ok, r.stderr
    with sb.session(files={"x": "1"}) as s:
        s.run(["bash", "-c", "sleep 30"], limits=HOSTILE.replace(wall_s=0.5))
    assert list(tmp_path.iterdir()) == []


def test_probe_reports_isolation(sandbox: Sandbox) -> None:
    report = sandbox.probe()
    assert {"session", "rlimits", "scrubbed-env", "private-folder"} <= report.active
    assert all(": " in line for line in report.describe())


def test_isolation_off_keeps_limits_but_reports_less() -> None:
    sb = Sandbox(SandboxLimits(wall_s=5, memory_mb=256), isolation="off")
    r = sb.run_python("x = bytearray(600 * 1024 * 1024)")
    assert not r.ok
    assert "memory" in (r.failure() or "")
    assert "netns" not in r.isolation
    assert "readonly-fs" not in r.isolation
    with pytest.raises(SandboxUnavailableError, match="lacks"):
        sb.require()


# -- hostile programs -----------------------------------------------------------------------------------
def test_infinite_loop_is_killed(hostile: Sandbox) -> None:
    start = time.monotonic()
    r = hostile.run_python("while True:\n    pass")
    assert not r.ok
    assert time.monotonic() - start < HOSTILE.wall_s + 2
    assert "CPU" in (r.failure() or "") or r.timed_out


def test_sleeper_is_killed_at_wall_time(hostile: Sandbox) -> None:
    marker = f"sleeper-{secrets.token_hex(4)}"
    start = time.monotonic()
    r = hostile.run([hostile.python, "-I", "-c", "import time\ntime.sleep(60)", marker])
    assert r.timed_out
    assert not r.ok
    assert "timed out" in (r.failure() or "")
    assert time.monotonic() - start < HOSTILE.wall_s + 2
    assert processes_with(marker) == []


def _watch_peak(marker: str, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], len(processes_with(marker)))
        time.sleep(0.02)


def test_fork_bomb_is_bounded_and_cleaned_up(hostile: Sandbox) -> None:
    marker = f"bomb-{secrets.token_hex(4)}"
    if has_process_cap(hostile):
        code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    else:  # no process cap here: a bomb that stops by itself, so the test machine survives anyway
        code = "import os, time\nfor _ in range(6):\n    os.fork()\ntime.sleep(60)"
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_watch_peak, args=(marker, stop, peak))
    watcher.start()
    try:
        r = hostile.run([hostile.python, "-I", "-c", code, marker])
    finally:
        stop.set()
        watcher.join()
    assert not r.ok
    assert processes_with(marker) == [], "processes of the sandbox survived it"
    if has_process_cap(hostile):
        assert peak[0] <= HOSTILE.max_processes + 2, f"saw {peak[0]} processes at once"


def test_shell_fork_bomb_leaves_nothing(hostile: Sandbox) -> None:
    marker = f"shbomb-{secrets.token_hex(4)}"
    if not has_process_cap(hostile):
        pytest.skip("no cap on the number of processes on this machine; a real fork bomb would be unsafe")
    r = hostile.run(["bash", "-c", f": {marker}; bomb() {{ bomb | bomb & }}; bomb; sleep 3"])
    assert not r.ok
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_memory_hog_is_stopped(hostile: Sandbox) -> None:
    r = hostile.run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(10 * 1024 * 1024))")
    assert not r.ok
    reason = r.failure() or ""
    assert "memory" in reason or "SIGKILL" in reason
    if r.max_rss_kb is not None:
        assert r.max_rss_kb < 2 * HOSTILE.memory_mb * 1024


def test_huge_file_is_stopped_at_the_size_limit(hostile: Sandbox) -> None:
    code = "f = open('big.bin', 'wb')\nwhile True:\n    f.write(b'0' * 1024 * 1024)"
    with hostile.session() as s:
        r = s.run([hostile.python, "-I", "-c", code])
        size = (s.workdir / "big.bin").stat().st_size
    assert not r.ok
    assert "File too large" in r.stderr or "file size" in (r.failure() or "")
    assert size <= HOSTILE.max_file_mb * 1024 * 1024


def _intact(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["precious.txt"]
    assert (folder / "precious.txt").read_text() == "precious\n"


WRITE_OUTSIDE = """
import os, sys
target = sys.argv[1]
for attempt in (
    lambda: open(target + "/precious.txt", "w").write("pwned"),
    lambda: open(target + "/precious.txt", "a").write("pwned"),
    lambda: open(target + "/new.txt", "w").write("pwned"),
    lambda: os.chmod(target + "/precious.txt", 0o777),
    lambda: os.rename(target + "/precious.txt", target + "/moved.txt"),
):
    try:
        attempt()
        print("SUCCEEDED")
    except OSError as exc:
        print(type(exc).__name__, exc.errno)
"""

DELETE_OUTSIDE = """
import os, shutil, sys
target = sys.argv[1]
for attempt in (lambda: os.remove(target + "/precious.txt"), lambda: shutil.rmtree(target)):
    try:
        attempt()
        print("SUCCEEDED")
    except OSError as exc:
        print(type(exc).__name__, exc.errno)
"""


def test_writing_outside_the_folder_fails(hostile: Sandbox, victim: Path) -> None:
    r = hostile.run([hostile.python, "-I", "-c", WRITE_OUTSIDE, str(victim)])
    assert "SUCCEEDED" not in r.stdout, r.stdout
    _intact(victim)


def test_writing_into_a_visible_folder_fails(victim: Path) -> None:
    # The folder is exposed to the sandbox and writable by anyone as far as file permissions go:
    # only the read-only mount stands in the way, and every attempt must meet it (EROFS).
    victim.chmod(0o777)
    (victim / "precious.txt").chmod(0o666)
    sb = Sandbox(HOSTILE, binds=[victim])
    r = sb.run([sb.python, "-I", "-c", WRITE_OUTSIDE, str(victim)])
    assert "SUCCEEDED" not in r.stdout, r.stdout
    if "readonly-fs" in r.isolation:
        assert r.stdout.split("\n")[:5] == ["OSError 30"] * 5, r.stdout
    _intact(victim)


def test_deleting_outside_the_folder_fails(hostile: Sandbox, victim: Path) -> None:
    r = hostile.run([hostile.python, "-I", "-c", DELETE_OUTSIDE, str(victim)])
    assert "SUCCEEDED" not in r.stdout, r.stdout
    _intact(victim)
    victim.chmod(0o777)
    sb = Sandbox(HOSTILE, binds=[victim])
    r = sb.run(["bash", "-c", f"rm -rf {victim} ; rm -f {victim}/precious.txt ; ls {victim}"])
    assert "precious.txt" in r.stdout  # the folder was visible: the deletions were refused, not misdirected
    _intact(victim)


def test_readonly_root_also_with_the_legacy_remount(victim: Path) -> None:
    victim.chmod(0o777)
    (victim / "precious.txt").chmod(0o666)
    sb = Sandbox(HOSTILE, binds=[victim])
    sb.mount_api = "legacy"
    r = sb.run([sb.python, "-I", "-c", WRITE_OUTSIDE, str(victim)])
    assert "SUCCEEDED" not in r.stdout, r.stdout
    if "readonly-fs" in r.isolation:
        assert r.stdout.split("\n")[:5] == ["OSError 30"] * 5, r.stdout
    _intact(victim)


FIND_SECRET = """
import glob, os, sys
secret = sys.stdin.read().strip()
print("env:", secret in repr(dict(os.environ)))
hits = []
for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        with open(path, "rb") as fh:
            if secret.encode() in fh.read() and not path.startswith(("/proc/self", "/proc/thread-self")):
                hits.append(path)
    except OSError:
        pass
print("proc:", hits)
"""


def test_parent_environment_is_unreachable(hostile: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("CYCLEQD_TEST_SECRET", secret)
    # A process of ours that holds the secret in its environment from the start (/proc shows that).
    holder = subprocess.Popen(["sleep", "30"], env={**os.environ, "CYCLEQD_TEST_SECRET": secret})
    try:
        # The program is told the secret on stdin (not argv, which /proc would show) and looks for it.
        r = hostile.run([hostile.python, "-I", "-c", FIND_SECRET], stdin=secret)
    finally:
        holder.kill()
        holder.wait()
    assert r.ok, r.stderr
    assert "env: False" in r.stdout
    assert "proc: []" in r.stdout, r.stdout


CONNECT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    print("CONNECTED")
except OSError as exc:
    print("refused:", exc)
"""


def test_network_connection_fails(hostile: Sandbox) -> None:
    server, accepted = listener()
    try:
        r = hostile.run([hostile.python, "-I", "-c", CONNECT, str(server.getsockname()[1])])
        time.sleep(0.1)
    finally:
        server.close()
    assert "CONNECTED" not in r.stdout
    assert accepted == []


def test_network_connection_works_when_allowed() -> None:
    # The control for the test above: the same program reaches the listener when networking is on.
    sb = Sandbox(HOSTILE.replace(network=True))
    server, accepted = listener()
    try:
        r = sb.run([sb.python, "-I", "-c", CONNECT, str(server.getsockname()[1])])
        deadline = time.monotonic() + 2
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.close()
    assert "CONNECTED" in r.stdout
    assert len(accepted) == 1


def test_this_process_and_its_children_survive(hostile: Sandbox) -> None:
    # Signals to every process the sandbox can name must reach none of ours. Without a PID namespace
    # or a throwaway uid, a root sandbox could reach them, so that is no place to try it.
    active = hostile.probe().active
    if not {"pidns", "unprivileged-uid"} & active:
        pytest.skip(f"neither a PID namespace nor a throwaway uid here ({sorted(active)})")
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        code = (
            "import os, signal\n"
            f"for pid in [*range(1, 4000), {sentinel.pid}, {os.getpid()}]:\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass"
        )
        r = hostile.run([hostile.python, "-I", "-c", code])
        assert r.returncode is not None
        assert sentinel.poll() is None, "a process of the test was killed from inside the sandbox"
    finally:
        sentinel.kill()
        sentinel.wait()


@pytest.mark.skipif(sys.platform != "linux", reason="Linux namespaces")
def test_full_isolation_on_this_machine(sandbox: Sandbox) -> None:
    """Records what this machine offers; root or unprivileged user namespaces give all of it."""
    active = sandbox.probe().active
    if "userns" not in active and os.geteuid() != 0:
        pytest.skip("no user namespaces for unprivileged users here")
    for feature in ("netns", "pidns", "minimal-root", "readonly-fs", "procfs", "no-capabilities"):
        assert feature in active, sandbox.probe().notes
