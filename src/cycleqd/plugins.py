"""Loading user code named as ``module:attribute`` in a config (custom tasks and the like)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cycleqd.errors import ConfigError


def import_object(ref: str, *, search_paths: Sequence[str | Path] = (), what: str = "object") -> Any:
    """Import ``module:attribute`` (the attribute may be dotted), looking in ``search_paths`` first.

    Args:
        ref: Reference such as ``my_tasks:Accuracy`` or ``pkg.mod:Outer.Inner``.
        search_paths: Folders put at the front of ``sys.path`` while importing (usually the folder of
            the config file, so a module next to the config is found).
        what: What the object is, for messages (``task class``).

    Returns:
        The imported object.

    Raises:
        ConfigError: When the reference is malformed, the module cannot be imported, or it lacks the
            attribute.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {ref!r} must be written module:attribute, for example my_tasks:MyTask")
    added = [str(Path(p).resolve()) for p in search_paths]
    for p in reversed(added):
        sys.path.insert(0, p)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (searched {', '.join(added)} and the installed packages)" if added else ""
        raise ConfigError(f"cannot import module {module_name!r} for {what} {ref!r}{where}: {exc}") from exc
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr!r} (for {what} {ref!r})"
            ) from None
    return obj
