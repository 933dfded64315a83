"""How many sequences the HF backend puts in one forward pass (``evaluation.batch_size: auto``).

A fixed batch is either too small for a small model (a CPU spends most of a 16-prompt step on
overhead) or too large for a big one (out of memory). ``auto`` sizes each batch from the model's
shape, the batch's longest sequence and the memory there is: a sequence of ``T`` tokens costs its
KV cache (``2 × layers × kv_heads × head_dim`` values per token), the activations of one layer at a
time (``hidden × 4 + intermediate`` values per token, counted twice for the temporaries) and its
logits (one row while generating, every row when scoring log-likelihoods, in float32). A batch gets
as many sequences as fit in a quarter of the available memory (half of the free GPU memory on CUDA),
at most :data:`MAX_AUTO_BATCH`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

#: Most sequences an automatic batch holds (beyond this a step gains nothing on CPU or GPU).
MAX_AUTO_BATCH = 256
#: Batch when the model's shape cannot be read from its config.
FALLBACK_BATCH = 16


@dataclass(frozen=True)
class ModelShape:
    """What a sequence costs per token in a causal LM, in values (multiply by the element size).

    Attributes:
        kv_per_token: Values the KV cache holds per token (all layers).
        activations_per_token: Values one layer's forward pass holds at once per token.
        vocab: Vocabulary size (the logits' width).
        element_bytes: Bytes per value of the model's dtype.
    """

    kv_per_token: int
    activations_per_token: int
    vocab: int
    element_bytes: int

    @classmethod
    def of(cls, config: object, dtype: torch.dtype) -> ModelShape | None:
        """Read the shape from a transformers config (``None`` when its fields are not the usual).

        Args:
            config: The model's config (a multimodal one's text config is used).
            dtype: The resident model's dtype.

        Returns:
            The shape, or ``None``.
        """
        text = config.get_text_config() if hasattr(config, "get_text_config") else config

        def first(*names: str) -> int | None:
            for name in names:
                value = getattr(text, name, None)
                if isinstance(value, int) and value > 0:
                    return value
            return None

        layers = first("num_hidden_layers", "n_layer", "num_layers")
        hidden = first("hidden_size", "n_embd", "d_model")
        heads = first("num_attention_heads", "n_head")
        vocab = first("vocab_size")
        if layers is None or hidden is None or heads is None or vocab is None:
            return None
        kv_heads = first("num_key_value_heads") or heads
        head_dim = first("head_dim") or hidden // heads
        intermediate = first("intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
        return cls(
            kv_per_token=2 * layers * kv_heads * head_dim,
            activations_per_token=2 * (4 * hidden + intermediate),
            vocab=vocab,
            element_bytes=torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4,
        )

    def sequence_bytes(self, tokens: int, *, logit_rows: int) -> int:
        """Bytes one sequence of ``tokens`` tokens costs in a batch.

        Args:
            tokens: Its length in the batch (prompt plus tokens to generate).
            logit_rows: Rows of logits kept (1 while generating; every position when scoring).

        Returns:
            The bytes.
        """
        per_token = (self.kv_per_token + self.activations_per_token) * self.element_bytes
        return tokens * per_token + logit_rows * self.vocab * 4


def available_memory(device: torch.device) -> int:
    """Bytes free now: a GPU's free memory, or the RAM the kernel reports available on CPU.

    Args:
        device: A torch device.

    Returns:
        The bytes (half the physical memory where the platform has no count of free pages, 4 GiB
        where it says nothing).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        pass
    try:  # macOS has no count of free pages: half the physical memory
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 4 << 30


def memory_budget(device: torch.device) -> int:
    """Bytes a batch may use: half the free memory of a GPU, a quarter of the available RAM on CPU.

    Args:
        device: The model's device.

    Returns:
        The budget (at least 256 MB).
    """
    share = 2 if device.type == "cuda" else 4
    return max(available_memory(device) // share, 256 << 20)


def auto_batch_size(shape: ModelShape | None, tokens: int, *, logit_rows: int, budget: int) -> int:
    """Sequences of ``tokens`` tokens that fit in ``budget`` bytes.

    Args:
        shape: The model's shape (``None``: :data:`FALLBACK_BATCH`).
        tokens: The longest sequence of the batch.
        logit_rows: Rows of logits per sequence (1 while generating, ``tokens`` when scoring).
        budget: Bytes available.

    Returns:
        Between 1 and :data:`MAX_AUTO_BATCH`.
    """
    if shape is None:
        return FALLBACK_BATCH
    each = shape.sequence_bytes(max(tokens, 1), logit_rows=logit_rows)
    return max(1, min(MAX_AUTO_BATCH, budget // each))


def batches(order: Sequence[int], size_for: Callable[[int], int]) -> Iterator[list[int]]:
    """Cut ``order`` (longest first) into batches whose size ``size_for`` gives from their first item.

    Args:
        order: Item indices, longest first (a batch's first item is its widest).
        size_for: The batch size for a batch that starts with this item.

    Yields:
        Lists of indices, in order.
    """
    start = 0
    while start < len(order):
        size = max(1, size_for(order[start]))
        yield list(order[start : start + size])
        start += size
