"""What the language-model backends share: one resident model, its fingerprint, its signature."""

from __future__ import annotations

import gc
import hashlib

import torch

from cycleqd.evaluation.base import Backend


class ResidentBackend(Backend):
    """A backend that keeps one model resident and loads each model's weights into it.

    Subclasses set ``_fingerprint`` on a successful :meth:`load` (``None`` while no valid model is
    held) and name what changes their answers in :meth:`_signature_parts`.
    """

    _fingerprint: str | None = None

    @property
    def fingerprint(self) -> str | None:  # noqa: D102
        return self._fingerprint

    @property
    def signature(self) -> str:  # noqa: D102
        blob = "|".join(map(str, self._signature_parts()))
        return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()

    def _signature_parts(self) -> tuple[object, ...]:
        """The settings that change the answers (chat template, dtype, ...), in a fixed order."""
        return ()

    def _require_model(self) -> None:
        """Refuse a query before the first successful :meth:`load`.

        Raises:
            RuntimeError: When no model is loaded.
        """
        if self._fingerprint is None:
            raise RuntimeError("no model loaded; call load() first")

    @staticmethod
    def _free_device_memory() -> None:
        """Return freed GPU memory to the device (after the resident model is dropped)."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
