"""Helpers for tests that run the toy example (a small MLP with analytic tasks) in a temp folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cycleqd.presets import merge_sections

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HERE = ROOT / "tests" / "engine"
CLI = str(Path(sys.executable).with_name("cycleqd"))


def write_toy_config(folder: Path, **overrides: Any) -> Path:
    """A copy of examples/toy.yaml with absolute paths, smaller splits and the given overrides."""
    cfg = yaml.safe_load((EXAMPLES / "toy.yaml").read_text())
    cfg["models"]["base"] = str(EXAMPLES / "toy/models/base.safetensors")
    cfg["models"]["experts"] = {
        k: str(EXAMPLES / "toy/models" / Path(v).name) for k, v in cfg["models"]["experts"].items()
    }
    cfg["root"] = str(EXAMPLES)
    for task in cfg["tasks"]:
        task["params"]["points"] = 128
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            # As a preset's sections merge: field by field, unless the override names another kind.
            cfg[key] = merge_sections(cfg[key], value)
        else:
            cfg[key] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli(
    *args: str, check: bool = True, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``cycleqd`` console script (in ``cwd`` when given)."""
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"cycleqd {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def toy_config(tmp_path: Path):
    """Factory: ``toy_config(**overrides) -> config path``."""

    def make(**overrides: Any) -> Path:
        folder = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*')))}"
        folder.mkdir()
        return write_toy_config(folder, **overrides)

    return make


@pytest.fixture
def flaky_tasks_root(tmp_path: Path) -> Path:
    """A folder holding the toy task module and the test task modules, usable as ``root``."""
    folder = tmp_path / "tasks_root"
    folder.mkdir()
    shutil.copy(EXAMPLES / "toy_tasks.py", folder / "toy_tasks.py")
    for module in ("flaky_tasks.py", "select_tasks.py"):
        shutil.copy(HERE / module, folder / module)
    return folder
