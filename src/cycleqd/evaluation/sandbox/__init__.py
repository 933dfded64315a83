"""Sandbox for everything a model wrote: limits, a private folder, and OS isolation where available.

See ``docs/sandbox.md`` for what is isolated with and without root.
"""

from cycleqd.evaluation.sandbox.batch import JobOutcome, SandboxJob, batch_unavailable, run_alone, run_batch
from cycleqd.evaluation.sandbox.core import Sandbox, SandboxSession
from cycleqd.evaluation.sandbox.folder import write_files
from cycleqd.evaluation.sandbox.limits import (
    ISOLATION_NAMES,
    IsolationReport,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
)

__all__ = [
    "ISOLATION_NAMES",
    "IsolationReport",
    "JobOutcome",
    "Sandbox",
    "SandboxJob",
    "SandboxLimits",
    "SandboxResult",
    "SandboxSession",
    "SandboxUnavailableError",
    "batch_unavailable",
    "run_alone",
    "run_batch",
    "write_files",
]
