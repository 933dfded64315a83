"""Torch generators derived from labels (see :mod:`cycleqd.seeding`)."""

from __future__ import annotations

import torch

from cycleqd.seeding import derive_seed


def make_generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`~cycleqd.seeding.derive_seed` of the labels.

    Args:
        *parts: Labels, for example ``(child_seed, "mutation", tensor_name)``.

    Returns:
        A freshly seeded generator.
    """
    return torch.Generator().manual_seed(derive_seed(*parts))
