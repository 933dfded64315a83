"""Shared fixtures: tiny Hugging Face Llamas built from a config (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cycleqd.weights.synthetic import synthetic_expert, synthetic_llama

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama base (sharded) and two experts derived from it; read-only for tests."""
    root = tmp_path_factory.mktemp("tiny_models")
    base = synthetic_llama(root / "base", seed=0, max_shard_bytes=40_000)
    return {
        "base": base,
        "e1": synthetic_expert(base, root / "e1", seed=1),
        "e2": synthetic_expert(base, root / "e2", seed=2, max_shard_bytes=60_000),
    }
