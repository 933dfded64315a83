"""Checks run on the base model and the experts before any long work starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cycleqd.errors import ModelMismatchError
from cycleqd.weights.fingerprint import combine_digests, tensor_digest
from cycleqd.weights.source import ModelSource

_SHOW = 10


@dataclass(frozen=True)
class ScanResult:
    """What one pass over a model's tensors found.

    Attributes:
        fingerprint: Hash of all tensors (see :mod:`cycleqd.weights.fingerprint`).
        nonfinite: Names of tensors holding NaN or Inf.
        n_params: Number of elements over all tensors.
    """

    fingerprint: str
    nonfinite: tuple[str, ...]
    n_params: int


def scan_model(source: ModelSource, *, check_finite: bool = True) -> ScanResult:
    """Read every tensor once: fingerprint it and look for non-finite values.

    Args:
        source: The model.
        check_finite: Whether to look for NaN and Inf.

    Returns:
        The :class:`ScanResult`.
    """
    digests = []
    bad = []
    n = 0
    for name in source:
        t = source[name]
        digests.append((name, tensor_digest(name, t)))
        n += t.numel()
        if check_finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return ScanResult(fingerprint=combine_digests(digests), nonfinite=tuple(bad), n_params=n)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f", and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def structure_problems(base: ModelSource, model: ModelSource, *, role: str = "expert") -> list[str]:
    """Differences of architecture, tensor names and shapes between a model and the base.

    Args:
        base: The base model.
        model: The model to compare.
        role: How to call the model in messages.

    Returns:
        One message per kind of problem; empty when the model matches the base.
    """
    problems = []
    who = f"{role} {model.name}"
    if base.architecture and model.architecture and base.architecture != model.architecture:
        problems.append(
            f"{who} is a {model.architecture} but the base {base.name} is a {base.architecture}; "
            "all experts must be fine-tuned from the same base model"
        )
    base_names = list(base)
    model_names = set(model)
    missing = [n for n in base_names if n not in model_names]
    extra = sorted(model_names - set(base_names))
    if missing:
        problems.append(
            f"{who} lacks {_plural(len(missing), 'tensor')} of the base: {_names(missing)}; "
            "all experts must be fine-tuned from the same base model"
        )
    if extra:
        problems.append(
            f"{who} has {_plural(len(extra), 'tensor')} that the base lacks: {_names(extra)}; "
            "all experts must be fine-tuned from the same base model (merge adapters such as LoRA "
            "into the weights first)"
        )
    wrong = [
        f"{n} ({role} {list(model.shape(n))}, base {list(base.shape(n))})"
        for n in base_names
        if n in model_names and model.shape(n) != base.shape(n)
    ]
    if wrong:
        problems.append(
            f"{who} has {_plural(len(wrong), 'tensor')} shaped unlike the base's: {_names(wrong)}; "
            "all experts must be fine-tuned from the same base model (same size and vocabulary)"
        )
    return problems


def validate_models(
    base: ModelSource,
    experts: Sequence[ModelSource],
    *,
    check_finite: bool = True,
) -> dict[str, ScanResult]:
    """Refuse a base and experts that cannot be merged, listing every problem at once.

    Checks that each expert has the base's architecture, tensor names and shapes, and (optionally) that
    no model holds NaN or Inf. Every model is read once.

    Args:
        base: The base model.
        experts: The experts.
        check_finite: Whether to scan values for NaN and Inf.

    Returns:
        The scan of each model by name (the base included), with its fingerprint.

    Raises:
        ModelMismatchError: With one line per problem, naming the offending tensors and the fix.
    """
    names = [base.name, *(e.name for e in experts)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModelMismatchError(
            f"two models share the name {', '.join(dupes)}; give each expert its own name"
        )
    problems = [p for e in experts for p in structure_problems(base, e)]
    if problems:
        raise ModelMismatchError("\n".join(problems))
    scans = {m.name: scan_model(m, check_finite=check_finite) for m in [base, *experts]}
    for m in [base, *experts]:
        bad = scans[m.name].nonfinite
        if bad:
            role = "base" if m is base else "expert"
            problems.append(
                f"{role} {m.name} has {_plural(len(bad), 'tensor')} with NaN or Inf values: "
                f"{_names(list(bad))}; the model is corrupt (diverged training or a broken conversion): "
                "retrain or re-download it"
            )
    if problems:
        raise ModelMismatchError("\n".join(problems))
    return scans
