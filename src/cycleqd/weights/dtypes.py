"""Names of storage dtypes as they appear in configs."""

from __future__ import annotations

import torch

from cycleqd.errors import ConfigError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """Turn a dtype name into a torch dtype.

    Args:
        name: ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``, a torch dtype, or
            ``auto``/``None`` for "keep each tensor's own dtype".

    Returns:
        The torch dtype, or ``None`` for ``auto``.

    Raises:
        ConfigError: For an unknown name.
    """
    if name is None or isinstance(name, torch.dtype):
        return name
    key = name.lower().removeprefix("torch.")
    if key == "auto":
        return None
    try:
        return _DTYPES[key]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16 or auto") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The config name of a torch dtype (``torch.bfloat16`` → ``bfloat16``)."""
    return str(dtype).removeprefix("torch.")
