"""Synthetic Hugging Face models built from a config, for tests, benchmarks and examples.

Nothing is downloaded: a ``LlamaForCausalLM`` is built from a ``LlamaConfig`` with seeded random
weights, and "experts" are the base plus seeded low-rank and dense perturbations, the shape that
fine-tuning leaves in a task vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cycleqd.weights.save import DEFAULT_MAX_SHARD_BYTES, save_model
from cycleqd.weights.source import open_model

TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 96,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}

# About 1.1B parameters: Llama-3.2-1B's shape with a smaller vocabulary.
BILLION_LLAMA: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


def synthetic_llama(
    out_dir: str | Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    **config: Any,
) -> Path:
    """Build a ``LlamaForCausalLM`` with random weights and save it as a Hugging Face folder.

    Args:
        out_dir: Destination folder.
        seed: Seed of the random initialisation.
        dtype: Storage dtype.
        max_shard_bytes: Shard size limit (small values give sharded folders).
        **config: ``LlamaConfig`` fields overriding :data:`TINY_LLAMA`.

    Returns:
        The folder.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**TINY_LLAMA, **config})
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(dtype)
    state = model.state_dict()
    del model
    save_model(state, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(out_dir)
    return Path(out_dir)


def synthetic_expert(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int,
    scale: float = 0.02,
    rank: int = 4,
    noise: float = 0.002,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """An "expert": the base plus a seeded low-rank perturbation and small dense noise per matrix.

    Streams tensor by tensor from the base, so it works for large bases in bounded memory.

    Args:
        base_dir: The base model folder.
        out_dir: Destination folder.
        seed: Seed of the perturbation.
        scale: Size of the low-rank part, relative to each matrix's standard deviation.
        rank: Rank of the low-rank part.
        noise: Size of the dense noise, relative to each tensor's standard deviation.
        max_shard_bytes: Shard size limit.

    Returns:
        The folder.
    """
    base = open_model(base_dir)
    g = torch.Generator().manual_seed(seed)

    def tensors():
        for name in base:
            t = base[name]
            x = t.float()
            std = float(x.std()) if x.numel() > 1 else 1.0
            std = std or 1.0
            delta = torch.randn(x.shape, generator=g) * (noise * std)
            if x.ndim == 2:
                a = torch.randn((x.shape[0], rank), generator=g)
                b = torch.randn((rank, x.shape[1]), generator=g)
                delta += (a @ b) * (scale * std / rank**0.5)
            yield name, (x + delta).to(t.dtype)

    return save_model(tensors(), out_dir, template=base, dtype=None, max_shard_bytes=max_shard_bytes)
