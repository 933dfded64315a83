"""Cache of task results per (model fingerprint, task, split), in a SQLite file.

A cached result is reused only while the task's signature (its settings and data) and the backend's
signature (settings that change answers) are unchanged; otherwise it is recomputed and replaced. Safe to
share between threads and processes (SQLite locking, WAL journal).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from cycleqd.evaluation.base import TaskResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    fingerprint TEXT NOT NULL,
    task TEXT NOT NULL,
    split TEXT NOT NULL,
    signature TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (fingerprint, task, split)
)
"""


class ResultCache:
    """Task results keyed by (fingerprint, task, split).

    Args:
        path: The SQLite file (created with its folder when missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        with self._lock, self._con:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute(_SCHEMA)

    def get(self, fingerprint: str, task: str, split: str, *, signature: str = "") -> TaskResult | None:
        """A cached result, if there is one with this signature.

        Args:
            fingerprint: Model fingerprint.
            task: Task name.
            split: Split.
            signature: Task and backend signature the result must have been computed with.

        Returns:
            The result, or ``None``.
        """
        with self._lock:
            row = self._con.execute(
                "SELECT signature, result FROM results WHERE fingerprint = ? AND task = ? AND split = ?",
                (fingerprint, task, split),
            ).fetchone()
        if row is None or row[0] != signature:
            return None
        return TaskResult.from_dict(json.loads(row[1]))

    def put(self, fingerprint: str, result: TaskResult, *, signature: str = "") -> None:
        """Store (or replace) a result.

        Args:
            fingerprint: Model fingerprint.
            result: The result (its task and split are part of the key).
            signature: Task and backend signature it was computed with.
        """
        blob = json.dumps(result.to_dict(), default=str)
        with self._lock, self._con:
            self._con.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                (fingerprint, result.task, result.split, signature, blob, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._con.close()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
