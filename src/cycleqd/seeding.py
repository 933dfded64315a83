"""Deterministic seeds derived from a run seed and labels (no torch, usable by every layer).

Every random draw of the method comes from a generator seeded by :func:`derive_seed` of the run seed,
the generation and a label for what is drawn. Draws therefore do not depend on the order in which
work happens (tensors streamed in any order, jobs finishing in any order, a run resumed midway).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any sequence of labels.

    Args:
        *parts: Labels (run seed, generation, tensor name, ...); their ``str`` forms are hashed.

    Returns:
        A non-negative integer below 2**63, the same for the same labels on every machine.
    """
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)
