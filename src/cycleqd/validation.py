"""Readable messages from pydantic validation errors, shared by every config of the project."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """Pydantic models named by an annotation (through Optional, unions, lists and dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models_in(typing.get_args(annotation)[0])
        return
    if origin in (typing.Union, types.UnionType, list, tuple, dict, set) or origin is not None:
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)


def fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The fields a config accepts at the place of an error (for "unknown field" messages).

    Args:
        model: The root model.
        loc: The error's location (the unknown field's own name last).

    Returns:
        Field names, or an empty list when the place holds no model.
    """
    current = model
    for part in loc[:-1]:
        if isinstance(part, int) or part not in current.model_fields:
            continue
        subs = list(_models_in(current.model_fields[part].annotation))
        if not subs:
            return []
        current = subs[0]
    return list(current.model_fields)


def _location(loc: Sequence[Any], prefix: str = "") -> str:
    """``tasks[1].name`` from an error's location under ``prefix``."""
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def inline_problems(exc: ValidationError, *, empty: str = "(item)") -> str:
    """The problems of a small object (a task's params, a data item) on one line, ``; ``-joined.

    Args:
        exc: The pydantic error.
        empty: The name of the object itself, for an error about it as a whole.

    Returns:
        ``field: problem; field: problem``.
    """
    parts = []
    for err in exc.errors():
        msg = (
            "unknown option (remove it or check its spelling)"
            if err["type"] == "extra_forbidden"
            else str(err["msg"]).removeprefix("Value error, ")
        )
        parts.append(f"{_location(err['loc']) or empty}: {msg}")
    return "; ".join(parts)


def validation_lines(
    exc: ValidationError, *, model: type[BaseModel] | None = None, prefix: str = ""
) -> list[str]:
    """One ``field.path: problem`` line per error of a validation.

    Unknown fields list the valid ones when ``model`` is given; pydantic's "Value error, " prefixes are
    dropped; list positions are written ``tasks[1].name``.

    Args:
        exc: The pydantic error.
        model: The validated model class (to list valid fields).
        prefix: Path of the validated object in its file (``evaluation``, ``tasks``).

    Returns:
        The lines.
    """
    lines = []
    for err in exc.errors():
        loc = _location(err["loc"], prefix)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = fields_at(model, err["loc"]) if model is not None else []
            msg = "unknown field; " + (
                f"valid fields: {', '.join(valid)}" if valid else "remove it or check its spelling"
            )
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif (
            err["type"] not in {"model_type", "dict_type"}
            and "input" in err
            and not isinstance(err["input"], dict)
        ):
            msg += f" (got {err['input']!r})"
        lines.append(f"{loc or '(top level)'}: {msg}")
    return lines
