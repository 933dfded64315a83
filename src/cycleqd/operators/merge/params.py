"""Per-tensor parameter values in mergekit's forms: scalars, layer gradients and name filters.

A *setting* is one of

- a scalar: ``0.5``, ``true``;
- a gradient: a list of numbers interpolated linearly over the depth of the model, ``[0, 0.5, 1]``;
- a list of conditions ``{filter: "self_attn", value: SETTING}``, the first whose filter is a substring
  of the tensor name (or is ``"*"`` or absent) applies; when none applies the setting is unset.

Gradients are read at the position t of a tensor in the model, as mergekit does for a merge of whole
models: t = i / (L − 1) in layer i of L (t = 1 when L = 1), t = 0 for embeddings before the first layer,
and t = 1 for everything else outside the layers (final norm, output head).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_EMBED = re.compile(r"embed|(?:^|\.)wte\.|(?:^|\.)wpe\.")


def layer_index(name: str) -> int | None:
    """The layer number in a tensor name (``model.layers.7.mlp.up_proj.weight`` → 7), or ``None``."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def count_layers(names: Iterable[str], config: Mapping[str, Any] | None = None) -> int:
    """Number of layers of a model.

    ``num_hidden_layers`` (or ``n_layer``) of its config, else the largest layer number in the tensor
    names plus one (0 without numbered layers).

    Args:
        names: Tensor names.
        config: The parsed ``config.json``, when there is one.

    Returns:
        The layer count.
    """
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if config and isinstance(config.get(key), int):
            return int(config[key])
    indices = [i for i in map(layer_index, names) if i is not None]
    return max(indices) + 1 if indices else 0


def position(name: str, n_layers: int) -> float:
    """The position t in [0, 1] at which gradients are read for a tensor (see the module docstring).

    Args:
        name: Tensor name.
        n_layers: Number of layers of the model.

    Returns:
        t.
    """
    i = layer_index(name)
    if i is None:
        return 0.0 if _EMBED.search(name) else 1.0
    if n_layers <= 1:
        return 1.0
    return min(1.0, i / (n_layers - 1))


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _condition(item: object) -> tuple[str | None, Any] | None:
    if isinstance(item, Mapping) and "value" in item:
        return item.get("filter"), item["value"]
    if hasattr(item, "value") and hasattr(item, "filter"):
        return item.filter, item.value
    return None


def evaluate_setting(setting: Any, *, name: str, t: float) -> Any:
    """The value of a setting for one tensor (mergekit's rules, see the module docstring).

    Args:
        setting: A scalar, gradient, condition or list of conditions.
        name: Tensor name (for filters).
        t: Position in the model (for gradients).

    Returns:
        The value, or ``None`` when no condition matches.

    Raises:
        ValueError: For a malformed setting.
    """
    cond = _condition(setting)
    if cond is not None:
        setting = [setting]
    if setting is None or isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, Sequence):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            if not all(_is_number(e) for e in setting):
                return setting[int(t * (len(setting) - 1))]
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        for item in setting:
            cond = _condition(item)
            if cond is None:
                raise ValueError(f"a parameter list mixes conditions and values: {setting!r}")
            flt, value = cond
            if flt is None or flt == "*" or flt in name:
                return evaluate_setting(value, name=name, t=t)
        return None
    raise ValueError(f"unexpected parameter setting {setting!r}: use a number, a list, or filter/value pairs")


def resolve(
    key: str,
    scopes: Sequence[Mapping[str, Any] | None],
    *,
    name: str,
    t: float,
    default: Any,
) -> Any:
    """The first value a parameter gets in a list of scopes (most specific first), else its default.

    Args:
        key: Parameter name.
        scopes: Settings mappings, such as (this model's parameters, the global parameters).
        name: Tensor name.
        t: Position in the model.
        default: Value when no scope sets the parameter for this tensor.

    Returns:
        The value.
    """
    for scope in scopes:
        if scope and key in scope:
            value = evaluate_setting(scope[key], name=name, t=t)
            if value is not None:
                return value
    return default
