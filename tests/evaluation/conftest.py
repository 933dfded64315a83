from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cycleqd.evaluation.sandbox import Sandbox, SandboxLimits
from cycleqd.evaluation.tasks.common import TaskContext


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """A sandbox shared by the tests: 1 s of CPU (which load does not stretch) kills runaway programs
    quickly; the wall-clock limit is generous so that a busy machine does not fail honest runs."""
    return Sandbox(SandboxLimits(wall_s=10, cpu_s=1, memory_mb=512, max_processes=32, max_file_mb=4))


@pytest.fixture(scope="session")
def ctx(sandbox: Sandbox) -> TaskContext:
    return TaskContext(sandbox=sandbox, max_new_tokens=64, workers=2)


@pytest.fixture
def data() -> Callable[..., dict[str, list[dict[str, Any]]]]:
    """Items → data by split, as the loader makes it (ids as text, split filled in)."""

    def make(items: list[dict[str, Any]], split: str = "validation") -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"validation": [], "test": []}
        for item in items:
            out[item.get("split", split)].append(
                {**item, "id": str(item["id"]), "split": item.get("split", split)}
            )
        return out

    return make


@pytest.fixture
def write_jsonl() -> Callable[[Path, list[dict[str, Any]]], Path]:
    def write(path: Path, rows: list[dict[str, Any]]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a character-level tokenizer (no chat template)."""
    from cycleqd.evaluation.chartokenizer import tiny_char_llama

    return tiny_char_llama(
        tmp_path_factory.mktemp("models") / "tiny", seed=0, hidden_size=48, intermediate_size=96
    )


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of model, with a chat template."""
    from cycleqd.evaluation.chartokenizer import SIMPLE_CHAT_TEMPLATE, tiny_char_llama

    return tiny_char_llama(
        tmp_path_factory.mktemp("models") / "tiny-chat",
        seed=1,
        chat_template=SIMPLE_CHAT_TEMPLATE,
        hidden_size=48,
        intermediate_size=96,
    )


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A folder outside any sandbox holding one precious file, for tests of writes and deletes."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.txt").write_text("precious\n")
    return folder
