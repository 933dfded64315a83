"""Model-level merging, streamed tensor by tensor.

:func:`merge_models` applies a registered merge method to every tensor of a base model and its
experts and yields the merged weights one tensor at a time, in the base's order, so that

    save_model(merge_models(base, experts, method="ties", ...), out_dir)

holds about one tensor per input model plus the output shard in memory, whatever the model size.
Inputs are any mappings from names to tensors: lazily read :class:`~cycleqd.weights.ModelSource`
objects, or dicts in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from cycleqd.operators.blocked import weighted_sum
from cycleqd.operators.merge.params import count_layers, position, resolve
from cycleqd.operators.merge.registry import (
    KEYWORDS,
    REQUIRED,
    MergeMethod,
    check_parameter,
    get_merge_method,
)
from cycleqd.operators.random import make_generator
from cycleqd.weights.pages import MappedPages


def merge_models(
    base: Mapping[str, torch.Tensor],
    models: Sequence[Mapping[str, torch.Tensor]],
    *,
    method: str | MergeMethod,
    weights: Sequence[Any] | None = None,
    densities: Sequence[Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    model_parameters: Sequence[Mapping[str, Any] | None] | None = None,
    seed: int = 0,
    out_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    n_layers: int | None = None,
    release_inputs: bool = False,
    **params: Any,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Merge models tensor by tensor: yield (name, θ0 + τ_merged) for every tensor of the base.

    For each floating-point tensor the task vectors τ_i = θ_i − θ0 are formed in float32, the method
    merges them, and the sum θ0 + τ is cast to ``out_dtype`` (default: the base tensor's dtype).
    Tensors that are not floating point (integer buffers) are the base's, unchanged.

    Methods that are linear in the models (``linear``, ``task_arithmetic``) declare weight-space
    coefficients, and their tensors are computed as c0 θ0 + Σ_i c_i θ_i in one pass per model (the
    base is not read when c0 = 0); the result equals the task-vector form up to float rounding.

    Parameter values follow mergekit: each is a scalar, a gradient over depth or a list of
    name filters (see :mod:`cycleqd.operators.merge.params`), resolved per tensor; a per-model value
    wins over a global one, which wins over the method's default. Random methods draw from a
    generator seeded by (``seed``, tensor name), so the result does not depend on tensor order.

    Args:
        base: The base model θ0.
        models: The other models θ_i (same names and shapes as the base).
        method: A registry name (see :data:`~cycleqd.operators.merge.MERGE_METHODS`) or a method.
        weights: Shorthand for a per-model ``weight`` setting, one per model.
        densities: Shorthand for a per-model ``density`` setting, one per model.
        parameters: Global parameter settings (``normalize``, ``lambda``, ``t``, or defaults for
            per-model ones such as ``weight``).
        model_parameters: Per-model settings (``weight``, ``density``), one mapping (or ``None``) per
            model.
        seed: Seed of the random methods (dare).
        out_dtype: Dtype of the merged floating-point tensors; ``None`` keeps the base's.
        device: Where the arithmetic runs (``cpu`` or ``cuda``); results come back on the CPU.
        n_layers: Depth of the model for gradients; default from the base's config or tensor names.
        release_inputs: After each tensor, unmap the pages of inputs read through a private file
            mapping (safetensors files opened by :func:`~cycleqd.weights.open_model`), so that they do
            not accumulate in this process's resident memory; the files stay in the page cache. Only
            for inputs that nobody modifies in place (Linux; ignored elsewhere).
        **params: More global settings by keyword (``normalize=False``, ``t=0.3``, ``scale=0.5``
            for ``lambda``); they override ``parameters``.

    Returns:
        An iterator over (name, merged tensor). Inputs are checked when this is called, before the
        first tensor is read.

    Raises:
        ValueError: For a wrong number of models or per-model settings, or an invalid parameter.
        ConfigError: For an unknown method name.
    """
    m = get_merge_method(method)
    models = list(models)
    if not models:
        raise ValueError(f"{m.name} merge needs at least one model besides the base")
    if m.n_models is not None and len(models) != m.n_models:
        raise ValueError(f"{m.name} merges the base with exactly {m.n_models} model(s), got {len(models)}")
    per_model: list[dict[str, Any]] = [
        dict(p or {}) for p in (model_parameters if model_parameters is not None else [None] * len(models))
    ]
    if len(per_model) != len(models):
        raise ValueError(f"got {len(models)} models but {len(per_model)} per-model parameter sets")
    for key, values in (("weight", weights), ("density", densities)):
        if values is not None:
            if len(values) != len(models):
                raise ValueError(f"got {len(models)} models but {len(values)} {key} values")
            for p, v in zip(per_model, values, strict=True):
                p[key] = v
    config_names = {kw: key for key, kw in KEYWORDS.items()}
    glob = dict(parameters or {})
    glob.update({config_names.get(k, k): v for k, v in params.items()})
    problems = [check_parameter(m, k, v, per_model=False) for k, v in glob.items()]
    problems += [check_parameter(m, k, v, per_model=True) for p in per_model for k, v in (p or {}).items()]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("; ".join(problems))
    missing = [k for k, d in m.params.items() if d is REQUIRED and k not in glob]
    if missing:
        raise ValueError(f"{m.name} merge needs the parameter(s) {', '.join(missing)}")
    names = list(base)
    depth = n_layers if n_layers is not None else count_layers(names, getattr(base, "config", None))
    return _stream(
        m, base, models, names, glob=glob, per_model=per_model, seed=seed, out_dtype=out_dtype,
        device=torch.device(device), depth=depth, release=MappedPages() if release_inputs else None,
    )  # fmt: skip


def _stream(
    m: MergeMethod,
    base: Mapping[str, torch.Tensor],
    models: list[Mapping[str, torch.Tensor]],
    names: list[str],
    *,
    glob: dict[str, Any],
    per_model: list[dict[str, Any]],
    seed: int,
    out_dtype: torch.dtype | None,
    device: torch.device,
    depth: int,
    release: MappedPages | None,
) -> Iterator[tuple[str, torch.Tensor]]:
    for name in names:
        b = base[name]
        if not b.is_floating_point():
            yield name, b
            continue
        t = position(name, depth)
        values = {k: resolve(k, [glob], name=name, t=t, default=d) for k, d in m.params.items()}
        model_values = {
            k: [resolve(k, [p, glob], name=name, t=t, default=d) for p in per_model]
            for k, d in m.model_params.items()
        }
        inputs = [mdl[name] for mdl in models]
        coefficients = m.weight_coefficients(len(models), model_values=model_values, values=values)
        if coefficients is not None:
            c0, cs = coefficients
            # A base coefficient within rounding of 0 (weights normalised to sum 1) skips reading the base.
            terms = list(zip(inputs, cs, strict=True)) + ([(b, c0)] if abs(c0) > 1e-12 else [])
            merged = weighted_sum(
                [x for x, _ in terms], [c for _, c in terms], device=device, out_dtype=out_dtype or b.dtype
            )
        else:
            b32 = b.to(device=device, dtype=torch.float32)
            # torch.sub promotes a bf16/fp16 operand to float32 without an intermediate copy.
            taus = [torch.sub(x.to(device), b32) for x in inputs]
            generator = make_generator(seed, "merge", name) if m.seeded else None
            tau = m(taus, base=b32, generator=generator, model_values=model_values, values=values)
            # Add the base in place unless the method handed back one of its inputs.
            merged = b32 + tau if _aliases(tau, [b32, *taus]) else tau.add_(b32)
            del taus, tau, b32
        out = merged.to(device="cpu", dtype=out_dtype or b.dtype)
        del merged
        if release is not None:
            release([b, *inputs])
        del inputs
        yield name, out


def _aliases(t: torch.Tensor, others: Sequence[torch.Tensor]) -> bool:
    """Whether ``t`` shares memory with any of ``others`` (then it must not be written in place)."""
    ptr = t.untyped_storage().data_ptr()
    return any(o.untyped_storage().data_ptr() == ptr for o in others)
