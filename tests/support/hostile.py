"""Helpers for tests of hostile programs: finding their processes and listening for their connections."""

from __future__ import annotations

import os
import socket
import threading


def processes_with(marker: str) -> list[int]:
    """Pids of the processes whose command line holds ``marker`` (not this one)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def listener() -> tuple[socket.socket, list[str]]:
    """A server on 127.0.0.1 (any free port) that records the address of one accepted connection."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(4)
    accepted: list[str] = []

    def accept() -> None:
        try:
            conn, addr = server.accept()
            accepted.append(str(addr))
            conn.close()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    return server, accepted
