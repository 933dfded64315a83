"""Runners execute jobs: in this process (local) or on a Ray cluster."""

from cycleqd.engine.runners.base import Runner
from cycleqd.engine.runners.local import LocalRunner

__all__ = ["LocalRunner", "Runner"]
