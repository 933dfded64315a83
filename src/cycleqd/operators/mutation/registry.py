"""The registry of mutations: kind → class. A new mutation is one module plus one line here.

The run config's ``mutation`` section is built from this registry (every kind's settings), and the
engine builds the mutation through :func:`build_mutation`, so a new kind needs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cycleqd.operators.mutation.base import Mutation, MutationContext
from cycleqd.operators.mutation.gaussian import GaussianMutation
from cycleqd.operators.mutation.identity import NoMutation
from cycleqd.operators.mutation.svd_expert import SVDExpertMutation
from cycleqd.operators.mutation.svd_self import SVDSelfMutation

MUTATIONS: dict[str, type[Mutation]] = {
    cls.kind: cls for cls in (SVDExpertMutation, SVDSelfMutation, GaussianMutation, NoMutation)
}
"""Every mutation by kind (the config's ``mutation.kind``)."""


def build_mutation(kind: str, settings: Mapping[str, Any], *, context: MutationContext) -> Mutation:
    """The mutation of a kind, built from its settings.

    Args:
        kind: A key of :data:`MUTATIONS`.
        settings: Its settings by name (validated against the kind's ``Settings``).
        context: What the run provides (the expert SVD caches).

    Returns:
        The mutation.

    Raises:
        ValueError: For an unknown kind (listing the valid ones) or invalid settings.
    """
    cls = MUTATIONS.get(kind)
    if cls is None:
        raise ValueError(f"unknown mutation kind {kind!r}; choose one of {', '.join(MUTATIONS)}")
    return cls.from_settings(cls.Settings.model_validate(dict(settings)), context=context)
