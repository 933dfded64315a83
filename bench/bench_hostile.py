"""The hostile set, through ``cycleqd eval --predictions``: is each attack contained, and how fast.

Run on demand (``make hostile``, or ``.venv/bin/python bench/bench_hostile.py``). Every attack is an
answer to the item "f(x) returns x + 1" (tests ``f(1) == 2``, ``f(-1) == 0``) that passes the item if,
and only if, the attack worked: it gets out of a limit, reaches what it must not, or fools the judge.
An attack is *contained* when its item fails and nothing outside was harmed (checked from outside:
the victim files, the listener, the host's free space, processes and sandbox folders left over). The
last row kills ``cycleqd eval`` itself while a looping answer runs.

Prints a Markdown table ``attack | contained | seconds | reason``; its output is in docs/sandbox.md.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

CYCLEQD = shutil.which("cycleqd", path=str(Path(sys.executable).parent)) or "cycleqd"
ITEM = {"id": "inc", "prompt": "f(x) = x + 1", "tests": ["assert f(1) == 2", "assert f(-1) == 0"]}
SECRET = "BENCH_SECRET_" + secrets.token_hex(4)


def _wins_if(condition: str, setup: str = "") -> str:
    """An answer that is right exactly when ``condition`` holds after ``setup`` ran."""
    return (
        f"import os, sys\nok = False\ntry:\n{_indent(setup)}\n    ok = bool({condition})\n"
        "except BaseException:\n    ok = False\n"
        "def f(x):\n    return x + 1 if ok else 0\n"
    )


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in (code or "pass").splitlines())


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class Bench:
    """One project folder, a victim file, a listener, and the attacks against them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp = root / "tmp"
        self.temp.mkdir()
        (root / "code.jsonl").write_text(json.dumps({**ITEM, "split": "test"}) + "\n")
        (root / "run.yaml").write_text(
            "tasks: [{name: code, kind: python_code, data: code.jsonl}]\n"
            "evaluation: {sandbox: {timeout_s: 5, cpu_s: 3}}\n"
        )
        self.victim = root / "victim.txt"
        self.victim.write_text("intact")
        self.doomed = root / "doomed.txt"
        self.doomed.write_text("intact")
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.connections: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()
        self.marker = "bench-" + secrets.token_hex(4)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)

    def attacks(self) -> dict[str, tuple[str, Callable[[], str | None]]]:
        """Attack name → (answer, an outside check returning what was harmed, or ``None``)."""
        sleeper = f"[sys.executable, '-c', 'import time; time.sleep(120)', {self.marker!r}]"
        nothing = lambda: None  # noqa: E731

        def no_leftovers() -> str | None:
            left = _processes_with(self.marker)
            return f"{len(left)} processes survived" if left else None

        return {
            "infinite loop": ("while True:\n    pass\ndef f(x):\n    return x + 1\n", nothing),
            "fork bomb": (
                "import os, sys, time\n"
                "while True:\n    try:\n        if os.fork() == 0:\n"
                f"            os.execv(sys.executable, {sleeper})\n"
                "    except OSError:\n        time.sleep(0.01)\n",
                no_leftovers,
            ),
            "8 GB allocation": (_wins_if("len(b) == 8 << 30", "b = bytearray(8 << 30)"), nothing),
            "2 GB file": (
                _wins_if(
                    "os.path.getsize('big') >= 2 << 30",
                    "with open('big', 'wb') as fh:\n"
                    "    for _ in range(2048):\n        fh.write(b'x' * (1 << 20))",
                ),
                nothing,
            ),
            "disk filler (15 MB files)": (
                _wins_if(
                    "i > 2000",
                    "block = b'x' * (15 << 20)\n"
                    "for i in range(4000):\n    open(f'fill{i}', 'wb').write(block)",
                ),
                nothing,
            ),
            "write outside": (
                _wins_if("True", f"open({str(self.victim)!r}, 'w').write('pwned')"),
                lambda: None if self.victim.read_text() == "intact" else "the victim file was changed",
            ),
            "delete outside": (
                _wins_if("True", f"os.remove({str(self.doomed)!r})"),
                lambda: None if self.doomed.exists() else "the file outside was deleted",
            ),
            "environment secret": (_wins_if(f"os.environ.get('BENCH_SECRET') == {SECRET!r}"), nothing),
            "loopback TCP": (
                _wins_if("True", f"import socket\nsocket.create_connection(('127.0.0.1', {self.port}), 2)"),
                lambda: f"{len(self.connections)} connections reached it" if self.connections else None,
            ),
            "always-equal object": (
                "class Anything:\n    def __eq__(self, other):\n        return True\n"
                "def f(x):\n    return Anything()\n",
                nothing,
            ),
            "report a pass through the stack": (
                "import os, sys\ndef f(x):\n    frame = sys._getframe()\n    while frame is not None:\n"
                "        if 'report' in frame.f_locals:\n"
                "            frame.f_locals['report']({'status': 'pass'})\n            os._exit(0)\n"
                "        frame = frame.f_back\n    return 0\n",
                nothing,
            ),
        }

    def score(self, answer: str) -> tuple[dict, float]:
        """Score one answer with ``cycleqd eval --predictions``: (its item record, seconds)."""
        preds = self.root / "preds.jsonl"
        preds.write_text(json.dumps({"task": "code", "id": "inc", "output": answer}) + "\n")
        env = {**os.environ, "TMPDIR": str(self.temp), "BENCH_SECRET": SECRET}
        start = time.monotonic()
        r = subprocess.run(
            [CYCLEQD, "eval", "--predictions", str(preds), "--config", "run.yaml", "-o", "items.jsonl"],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        seconds = time.monotonic() - start
        if r.returncode != 0:
            return {"correct": False, "reason": "cycleqd eval failed: " + r.stderr.strip()[-200:]}, seconds
        return json.loads((self.root / "items.jsonl").read_text().splitlines()[0]), seconds

    def killed_evaluator(self) -> tuple[bool, float, str]:
        """SIGKILL ``cycleqd eval`` while its answer loops: is everything gone soon after?"""
        sleeper = f"[sys.executable, '-c', 'import time; time.sleep(120)', {self.marker!r}]"
        answer = (
            "import os, sys\nif os.fork() == 0:\n    os.setsid()\n"
            f"    os.execv(sys.executable, {sleeper})\nwhile True:\n    pass\n"
        )
        preds = self.root / "preds.jsonl"
        preds.write_text(json.dumps({"task": "code", "id": "inc", "output": answer}) + "\n")
        proc = subprocess.Popen(
            [CYCLEQD, "eval", "--predictions", str(preds), "--config", "run.yaml"],
            cwd=self.root,
            env={**os.environ, "TMPDIR": str(self.temp)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not _processes_with(self.marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        start = time.monotonic()
        while time.monotonic() - start < 10:
            if not _processes_with(self.marker) and not list(self.temp.iterdir()):
                return True, time.monotonic() - start, "nothing left (processes, sandbox folders)"
            time.sleep(0.05)
        left = f"{len(_processes_with(self.marker))} processes, {len(list(self.temp.iterdir()))} folders left"
        return False, time.monotonic() - start, left


def main() -> None:
    """Run every attack and print the table."""
    with tempfile.TemporaryDirectory(prefix="cycleqd-hostile-") as folder:
        bench = Bench(Path(folder))
        rows = []
        for name, (answer, harmed) in bench.attacks().items():
            free = shutil.disk_usage(folder).free
            record, seconds = bench.score(answer)
            time.sleep(0.2)
            damage = harmed()
            if free - shutil.disk_usage(folder).free > 512 << 20:
                damage = "the host lost more than 512 MB of free space"
            if list(bench.temp.iterdir()):
                damage = "sandbox folders were left behind"
            contained = not record.get("correct") and damage is None
            rows.append((name, contained, seconds, damage or record.get("reason") or ""))
        ok, seconds, note = bench.killed_evaluator()
        rows.append(("evaluator SIGKILLed during a looping answer", ok, seconds, note))
        bench.server.close()
    print("| attack | contained | seconds | reason |")
    print("|---|---|---|---|")
    for name, contained, seconds, reason in rows:
        print(f"| {name} | {'yes' if contained else '**NO**'} | {seconds:.1f} | {reason[:110]} |")
    if not all(r[1] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
