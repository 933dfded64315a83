"""Model fingerprints: a hash of tensor names, dtypes, shapes and bytes.

Two models with the same fingerprint hold bit-identical tensors under the same names, whatever their
file layout (sharding, tensor order on disk). Fingerprints key caches of evaluation results and of
expert SVDs, and identify models in the run registry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor in its own dtype (any dtype, bf16 included), without a copy if contiguous.

    Args:
        tensor: A CPU tensor.

    Returns:
        A memoryview of the tensor's bytes.
    """
    flat = tensor.detach().reshape(-1).contiguous()
    return memoryview(flat.view(torch.uint8).numpy())


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hash tensors into a fingerprint, reading each tensor once.

    The hash is independent of iteration order: tensors are hashed one by one and combined sorted by
    name, so a lazily read source can be hashed in file order.

    Args:
        tensors: A mapping, or pairs of (name, tensor).

    Returns:
        A 32-character hexadecimal fingerprint.
    """
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    digests = [(name, tensor_digest(name, tensor)) for name, tensor in items]
    return combine_digests(digests)


def tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    """Digest of one named tensor (name, dtype, shape and bytes).

    Args:
        name: Tensor name.
        tensor: The tensor.

    Returns:
        A 16-byte digest.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}|".encode())
    h.update(tensor_bytes(tensor.cpu()))
    return h.digest()


def combine_digests(digests: Iterable[tuple[str, bytes]]) -> str:
    """Combine per-tensor digests, sorted by name, into one fingerprint.

    Args:
        digests: Pairs of (name, digest from :func:`tensor_digest`).

    Returns:
        A 32-character hexadecimal fingerprint.
    """
    h = hashlib.blake2b(digest_size=16)
    for _name, digest in sorted(digests):
        h.update(digest)
    return h.hexdigest()
