"""A key-value cache with room for the tokens still to come, for the Hugging Face backend.

``transformers``' ``DynamicCache`` grows each layer's keys and values by concatenation, so every
decoding step copies the whole cache: for the small models the demo evolves that copy was a fifth of the
time of generation. :func:`roomy_cache` gives each full-attention layer buffers sized for the prompt
plus the tokens to generate; a step writes its new keys and values in place and attention reads the
filled part (a view of the same values, so the outputs are the same). Layers of other kinds (sliding
windows, linear attention) keep their own class.
"""

from __future__ import annotations

from typing import Any

import torch

try:  # transformers >= 4.56 (cache layers)
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - older transformers: the model makes its own cache
    DynamicCache = DynamicLayer = None


if DynamicLayer is not None:

    class RoomyLayer(DynamicLayer):
        """A full-attention cache layer that keeps room for ``room`` more tokens than its prompt.

        Args:
            room: Tokens that may be added after the first update (the prompt).
        """

        def __init__(self, room: int) -> None:
            super().__init__()
            self.room = room
            self.filled = 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            """Make the buffers at the first update: the prompt's length plus ``room``."""
            n, heads, length, dim = key_states.shape
            self.device = key_states.device
            capacity = length + self.room
            self._keys = key_states.new_empty((n, heads, capacity, dim))
            self._values = value_states.new_empty((n, value_states.shape[1], capacity, value_states.shape[3]))
            self.filled = 0
            self.is_initialized = True

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            """Write new keys and values after the cached ones, in place.

            Args:
                key_states: Keys of the new tokens (``[batch, heads, tokens, dim]``).
                value_states: Their values.
                *args: Ignored (the cache's ``update`` passes the layer's arguments).
                **kwargs: Ignored.

            Returns:
                All keys and values so far (views of the buffers).
            """
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.filled + key_states.shape[-2]
            if end > self._keys.shape[-2]:
                # More tokens than planned for: grow (once per overflow, like the dynamic cache).
                self._keys = torch.cat([self._keys[..., : self.filled, :], key_states], dim=-2)
                self._values = torch.cat([self._values[..., : self.filled, :], value_states], dim=-2)
            else:
                self._keys[..., self.filled : end, :] = key_states
                self._values[..., self.filled : end, :] = value_states
            self.filled = end
            self.keys = self._keys[..., :end, :]
            self.values = self._values[..., :end, :]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep only the sequences at ``indices`` (with their room)."""
            if self.filled > 0:
                self._keys = self._keys.index_select(0, indices)
                self._values = self._values.index_select(0, indices)
                self.keys = self._keys[..., : self.filled, :]
                self.values = self._values[..., : self.filled, :]

        def reset(self) -> None:
            """Forget the cached tokens."""
            super().reset()
            self.filled = 0


def roomy_cache(config: Any, *, room: int) -> Any:
    """A fresh cache for one batch: full-attention layers with room for ``room`` generated tokens.

    Args:
        config: The model's config.
        room: Tokens to be generated after the prompt.

    Returns:
        The cache, or ``None`` where this version of ``transformers`` has no cache layers (the model
        then makes its own).
    """
    if DynamicCache is None:
        return None
    try:
        cache = DynamicCache(config=config)
    except Exception:  # a config this version cannot build a cache from: let the model do it
        return None
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or not layers:
        return None
    cache.layers = [RoomyLayer(room) if type(layer) is DynamicLayer else layer for layer in layers]
    return cache
