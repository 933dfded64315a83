"""Config sections whose fields come from a registry: one ``kind`` field plus each kind's settings.

A registry (mutations, selection rules) maps a kind to a pydantic model of the settings it takes.
:func:`kind_section` builds the flat config section over the whole registry: ``kind`` (or
``method``), the fields every kind shares, and every kind's settings, so a YAML section stays flat
(``mutation: {kind: gaussian, sigma: 0.001}``), unknown names are reported with the valid ones and a
new registry entry needs nothing here. After validation, a setting of another kind is an error that
names the kind it belongs to (a value equal to its default is accepted: it changes nothing, and the
resolved configs of older runs list every field), and the kind's own settings are validated by its
model (cross-field rules included) and available as :attr:`KindSection.settings`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_validator

from cycleqd.validation import validation_lines


@dataclass(frozen=True)
class KindSpec:
    """What a section built by :func:`kind_section` knows about its registry.

    Attributes:
        key: The field naming the kind (``kind``, ``method``).
        what: The registry's noun, for messages (``mutation``, ``selection rule``).
        settings: Kind → its settings model.
        owners: Setting name → the kinds that take it.
        check: Called with (kind, validated settings) for rules a model cannot state (may raise
            ``ValueError``).
    """

    key: str
    what: str
    settings: Mapping[str, type[BaseModel]]
    owners: Mapping[str, tuple[str, ...]]
    check: Callable[[str, BaseModel], None] | None = None


def changed_fields(section: BaseModel, names: Iterable[str]) -> list[str]:
    """The fields among ``names`` that a config set to something other than their default, sorted.

    A setting that applies only to another kind is harmless at its default (and the resolved configs
    of older runs list every field), so only these are refused.

    Args:
        section: A validated config section.
        names: Field names of the section.

    Returns:
        The names given explicitly with a non-default value.
    """
    fields = type(section).model_fields
    return sorted(
        name
        for name in set(names) & section.model_fields_set
        if getattr(section, name) != fields[name].get_default(call_default_factory=True)
    )


class KindSection(BaseModel):
    """Base of a config section over a registry (see :func:`kind_section`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    spec: ClassVar[KindSpec]

    @property
    def kind_name(self) -> str:
        """The kind this section selects."""
        return str(getattr(self, self.spec.key))

    @property
    def settings(self) -> BaseModel:
        """The selected kind's settings, validated by its own model."""
        model = self.spec.settings[self.kind_name]
        return model.model_validate({name: getattr(self, name) for name in model.model_fields})

    @model_validator(mode="after")
    def _own_settings(self) -> KindSection:
        spec, kind = self.spec, self.kind_name
        foreign = [name for name, owners in spec.owners.items() if kind not in owners]
        for name in changed_fields(self, foreign):
            owners = spec.owners[name]
            raise ValueError(
                f"{name} is a setting of the {' and '.join(owners)} {spec.what}, not of {kind}; "
                f"remove it or set {spec.key}: {owners[0]}"
            )
        try:
            settings = self.settings
        except ValidationError as exc:
            lines = (line.removeprefix("(top level): ") for line in validation_lines(exc))
            raise ValueError("; ".join(lines)) from None
        if spec.check is not None:
            spec.check(kind, settings)
        return self


def kind_section(
    name: str,
    *,
    key: str,
    what: str,
    settings: Mapping[str, type[BaseModel]],
    default: str,
    base: type[KindSection] = KindSection,
    check: Callable[[str, BaseModel], None] | None = None,
    doc: str = "",
) -> type[KindSection]:
    """Build the config section of a registry.

    Args:
        name: The model's class name.
        key: The field naming the kind.
        what: The registry's noun, for messages.
        settings: Kind → settings model.
        default: The kind used when the section does not name one.
        base: A :class:`KindSection` subclass holding the fields every kind shares.
        check: See :class:`KindSpec`.
        doc: The model's docstring.

    Returns:
        The section's model class.

    Raises:
        TypeError: When two kinds take a setting of the same name with different types or defaults,
            or a kind's setting shadows a shared field (a registry entry to rename).
    """
    shared = set(base.model_fields) | {key}
    owners: dict[str, list[str]] = {}
    fields: dict[str, Any] = {}
    for kind, model in settings.items():
        for field_name, info in model.model_fields.items():
            if field_name in shared:
                raise TypeError(f"{what} {kind}: setting {field_name!r} shadows a field every kind has")
            if field_name in fields:
                other = fields[field_name][1]
                if other.annotation != info.annotation or other.default != info.default:
                    raise TypeError(
                        f"{what}s {owners[field_name][0]} and {kind} both take {field_name!r} with "
                        "different types or defaults; rename one"
                    )
            else:
                fields[field_name] = (info.annotation, info)
            owners.setdefault(field_name, []).append(kind)
    kinds = tuple(settings)
    if default not in kinds:
        raise TypeError(f"default {what} {default!r} is not registered")
    section = create_model(name, __base__=base, __doc__=doc, **{key: (Literal[kinds], default)}, **fields)
    section.spec = KindSpec(
        key=key,
        what=what,
        settings=dict(settings),
        owners={k: tuple(v) for k, v in owners.items()},
        check=check,
    )
    return section


def keyword_settings(fn: Callable[..., Any], *, what: str) -> type[BaseModel]:
    """The settings a registered function takes: a model of its keyword-only parameters.

    Their annotations are the types and their defaults the defaults; rules on the values stay in the
    function (see :class:`KindSpec`'s ``check``).

    Args:
        fn: A registered function (a selection rule).
        what: Its registry's noun, for messages.

    Returns:
        A pydantic model (unknown fields are errors).

    Raises:
        TypeError: When a keyword-only parameter has no default (a config could not leave it out).
    """
    hints = typing.get_type_hints(fn)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"{what} {fn.__name__}: setting {param.name!r} needs a default")
        fields[param.name] = (hints.get(param.name, Any), param.default)
    name = "".join(part.title() for part in fn.__name__.split("_")) + "Settings"
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)
