"""Fixtures for engine tests (helpers live in tests/support/toyrun.py)."""

from toyrun import flaky_tasks_root, toy_config  # noqa: F401 - fixtures
