"""A learned merge to start evolution from: per-tensor coefficients fitted by distilling each expert.

The merge is task arithmetic with one coefficient per expert and tensor group,

    θ(λ)_n = θ0_n + Σ_k λ_{k, g(n)} τ_{k, n},

where ``g(n)`` is the group of tensor ``n`` (the tensor itself, its decoder layer, or the whole model).
Only λ is trained (K × G numbers: K per tensor of the model by default), by Adam on a sequence-level
distillation loss (Kim & Rush, 2016): for every task ``k``, expert ``k``'s own greedy answers to the
validation prompts of task ``k`` are the targets, and the loss is the mean over tasks of the mean token
cross-entropy of θ(λ) on them. No labels are read: the experts are the teachers, each on the inputs of
its own skill, and the merge learns how much of each expert every part of the network should carry.

This is the AdaMerging idea (Yang et al., ICLR 2024: layer-wise coefficients learned on unlabeled
inputs) with the experts' answers in place of AdaMerging's entropy objective, which has no clear
analogue for generated text. Per-group coefficients give the freedom that one λ lacks, and the result
lies off the plane of coefficient vectors summing to one where the paper's crossover keeps children.
It is offered to the archives like the cheap seed merges of ``init.merges`` and scored like any child.

Memory: the base, K task vectors, the merge, its gradient and the model in fp32, plus one backward
pass (:func:`memory_needed`): fine for the small models a laptop runs, about 225 GB for three 8B
experts.
A run checks it against the free memory before any work and refuses, or with ``optional`` skips the
merge and says why (:func:`distill_obstacle`).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cycleqd.errors import CycleQDError
from cycleqd.evaluation.backends.batching import available_memory
from cycleqd.weights import ModelSource, fingerprint_tensors

if TYPE_CHECKING:
    from cycleqd.config import DistillConfig
    from cycleqd.evaluation.base import Backend, Task

GROUPINGS = ("tensor", "layer", "model")
"""How tensors share a coefficient: each its own, one per decoder layer, or one for the whole model."""

_LAYER = re.compile(r"\.(\d+)\.")


def group_keys(names: Sequence[str], *, grouping: str) -> list[str]:
    """The coefficient group of each tensor.

    Args:
        names: Tensor names, in a fixed order.
        grouping: ``tensor`` (every tensor its own group), ``layer`` (tensors whose name holds the same
            first ``.<index>.`` share one, as in ``model.layers.3.mlp.up_proj.weight``; the others, such
            as embeddings and the final norm, keep one each) or ``model`` (one group).

    Returns:
        One key per name, in the order of ``names``.

    Raises:
        ValueError: For an unknown grouping.
    """
    if grouping == "tensor":
        return list(names)
    if grouping == "model":
        return ["model"] * len(names)
    if grouping == "layer":
        keys = []
        for name in names:
            m = _LAYER.search(name)
            keys.append(f"layer {m.group(1)}" if m else name)
        return keys
    raise ValueError(f"unknown grouping {grouping!r}; use one of {', '.join(GROUPINGS)}")


@dataclass(frozen=True)
class Example:
    """One distillation target: a prompt and the expert's answer, as token ids.

    Attributes:
        prompt: Token ids of the prompt (the model conditions on them; no loss).
        answer: Token ids of the expert's answer and the end token (the loss is on these; a reply
            cut at the length limit also gets it, so the merge learns to stop there too).
    """

    prompt: tuple[int, ...]
    answer: tuple[int, ...]


def merged_tensors(
    base: Mapping[str, torch.Tensor],
    task_vectors: Sequence[Mapping[str, torch.Tensor]],
    coefficients: torch.Tensor,
    *,
    groups: Sequence[int],
) -> dict[str, torch.Tensor]:
    """θ0 + Σ_k λ_{k, g(n)} τ_{k, n} for every tensor ``n`` of the base.

    Args:
        base: θ0, by name (fp32).
        task_vectors: τ_k of each expert, by the same names.
        coefficients: λ, shape ``(K, G)``; gradients flow through it.
        groups: The group index of each tensor, in the order of ``base``.

    Returns:
        The merged tensors, by name.

    Raises:
        ValueError: If the shapes disagree.
    """
    k, n_groups = coefficients.shape
    if k != len(task_vectors) or len(groups) != len(base) or (groups and max(groups) >= n_groups):
        raise ValueError(
            f"coefficients of shape {tuple(coefficients.shape)} do not fit {len(task_vectors)} task "
            f"vectors and {len(base)} tensors in groups up to {max(groups, default=-1)}"
        )
    out = {}
    for (name, theta0), g in zip(base.items(), groups, strict=True):
        delta = sum(coefficients[i, g] * tv[name] for i, tv in enumerate(task_vectors))
        out[name] = theta0 + delta
    return out


def _batch(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (−100 outside the answers)."""
    width = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, e in enumerate(examples):
        seq = e.prompt + e.answer
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(e.prompt) : len(seq)] = torch.tensor(e.answer)
    return ids, mask, labels


def answer_loss(
    model: torch.nn.Module, weights: Mapping[str, torch.Tensor], examples: Sequence[Example], *, pad_id: int
) -> torch.Tensor:
    """Mean token cross-entropy of the answers under ``model`` run with ``weights``.

    Args:
        model: A causal language model whose parameters have the names of ``weights``.
        weights: The tensors to run it with (may carry gradients).
        examples: Prompts and answers.
        pad_id: Padding token id.

    Returns:
        A scalar tensor.
    """
    ids, mask, labels = _batch(examples, pad_id)
    names = {n for n, _ in model.named_parameters()}
    params = {n: w for n, w in weights.items() if n in names}
    out = torch.func.functional_call(
        model, params, (), {"input_ids": ids.to(_device(model)), "attention_mask": mask.to(_device(model))}
    )
    logits = out.logits[:, :-1]
    target = labels[:, 1:].to(logits.device)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100
    )


def targets_loss(
    model: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    examples: Sequence[Sequence[Example]],
    *,
    pad_id: int,
    batch_size: int,
) -> float:
    """The fit's objective on every example: the mean over tasks of each task's mean token cross-entropy.

    Args:
        model: The architecture (as for :func:`answer_loss`).
        weights: The tensors to run it with.
        examples: For each task, its examples.
        pad_id: Padding token id.
        batch_size: Examples per forward pass.

    Returns:
        The loss (no gradient).
    """
    per_task = []
    with torch.no_grad():
        for task_examples in examples:
            total = tokens = 0.0
            for start in range(0, len(task_examples), batch_size):
                chunk = task_examples[start : start + batch_size]
                n = sum(len(e.answer) for e in chunk)
                total += float(answer_loss(model, weights, chunk, pad_id=pad_id)) * n
                tokens += n
            per_task.append(total / tokens)
    return sum(per_task) / len(per_task)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def learn_coefficients(
    model: torch.nn.Module,
    *,
    base: Mapping[str, torch.Tensor],
    task_vectors: Sequence[Mapping[str, torch.Tensor]],
    examples: Sequence[Sequence[Example]],
    groups: Sequence[int],
    steps: int,
    lr: float,
    start: float,
    batch_size: int,
    seed: int,
    pad_id: int,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Fit λ by Adam on the distillation loss, every task weighted alike.

    Each step draws ``ceil(batch_size / K)`` examples of every task (without replacement within the
    step, from a generator seeded by ``seed``), so a task's weight does not depend on how many
    prompts it has, and the loss is the mean of the tasks' mean token cross-entropies.

    Args:
        model: The architecture, loaded once; its own weights are not used or changed.
        base: θ0 by name (fp32, on the model's device).
        task_vectors: τ_k of each expert, by the same names.
        examples: For each expert, the examples of its task (at least one each).
        groups: Group index of each tensor, in the order of ``base``.
        steps: Optimiser steps.
        lr: Adam's learning rate.
        start: Every coefficient's first value (task arithmetic with λ = ``start``).
        batch_size: Examples per step, over all tasks.
        seed: Seed of the draws of examples.
        pad_id: Padding token id.
        progress: Called after each step with the step number (from 1) and the loss.

    Returns:
        λ of shape ``(K, G)`` (detached) and the loss of every step.

    Raises:
        ValueError: If an expert has no examples, or the counts disagree.
    """
    if len(examples) != len(task_vectors):
        raise ValueError(f"{len(examples)} example lists for {len(task_vectors)} task vectors")
    empty = [i for i, ex in enumerate(examples) if not ex]
    if empty:
        raise ValueError(f"expert(s) {empty} have no distillation examples")
    n_groups = max(groups) + 1
    coefficients = torch.full(
        (len(task_vectors), n_groups),
        float(start),
        dtype=torch.float32,
        device=_device(model),
        requires_grad=True,
    )
    optimiser = torch.optim.Adam([coefficients], lr=lr)
    rng = random.Random(seed)
    per_task = math.ceil(batch_size / len(examples))
    losses = []
    for step in range(1, steps + 1):
        weights = merged_tensors(base, task_vectors, coefficients, groups=groups)
        loss = sum(
            answer_loss(model, weights, rng.sample(list(ex), min(per_task, len(ex))), pad_id=pad_id)
            for ex in examples
        ) / len(examples)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    return coefficients.detach(), losses


def memory_needed(base: ModelSource, *, experts: int) -> int:
    """Bytes the fit holds besides activations and the evaluation backend's model.

    Args:
        base: The base model (shapes are read from its file headers).
        experts: K.

    Returns:
        ``4 × (K + 4) ×`` the floating-point parameters of the base: θ0, the K task vectors, the
        merge, its gradient and the architecture's own copy, all in fp32.
    """
    floats = sum(base.numel(n) for n in base if base.dtype(n).is_floating_point)
    return 4 * (experts + 4) * floats


def distill_obstacle(
    tasks: Sequence[Task], *, backend_kind: str, base: ModelSource, experts: int, available: int
) -> str | None:
    """Why ``init.distill`` cannot run in this run, or ``None`` when it can.

    Args:
        tasks: The run's tasks.
        backend_kind: ``evaluation.backend``.
        base: The base model.
        experts: Number of experts.
        available: Bytes free on the device the coefficients are fitted on.

    Returns:
        The reason, or ``None``: a backend without a language model, a task that cannot say what
        its expert replies (:attr:`~cycleqd.evaluation.base.Task.can_teach`), or less free memory
        than :func:`memory_needed` with a quarter more for activations.
    """
    if backend_kind not in ("hf", "vllm"):
        return (
            f"it learns a merge from the experts' generated replies, but evaluation.backend is "
            f"{backend_kind}; use the hf or vllm backend"
        )
    for task in tasks:
        if not task.can_teach:
            return (
                f"task {task.name} ({type(task).__name__}) cannot say what its expert replies (it has "
                "no teacher_pairs); give its class a teacher_pairs method"
            )
    need = memory_needed(base, experts=experts) * 5 // 4
    if need > available:
        return (
            f"the fit needs about {need / 2**30:.1f} GiB (the base, {experts} task vectors, the merge, "
            f"its gradient and the model in fp32) and {available / 2**30:.1f} GiB are free; "
            "use a device with more memory"
        )
    return None


class DistillError(CycleQDError):
    """The learned merge cannot be made here (an ``optional`` one is then skipped)."""


def _architecture(
    base: ModelSource, *, grouping: str
) -> tuple[torch.nn.Module, list[str], list[int], list[str]]:
    """The base's architecture in fp32 on CPU, its floating-point tensor names and their groups.

    A tensor the checkpoint stores once for two parameters (a head tied to the embeddings) is
    grouped under the name the checkpoint uses.

    Raises:
        DistillError: If the model has parameters the checkpoint does not name.
    """
    from transformers import AutoModelForCausalLM

    from cycleqd.evaluation.backends.loading import quiet_progress

    names = [n for n in base if base.dtype(n).is_floating_point]
    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params = dict(model.named_parameters())
    twin = {
        n: next(p for p, t in params.items() if t is value)
        for n, value in model.state_dict(keep_vars=True).items()
        if n not in params and any(t is value for t in params.values())
    }
    missing = sorted(set(params) - set(names))
    if missing:
        raise DistillError(
            f"init.distill: the model in {base.path} has parameters its checkpoint does not name "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); drop init.distill"
        )
    keys = group_keys([twin.get(n, n) for n in names], grouping=grouping)
    order = list(dict.fromkeys(keys))
    return model, names, [order.index(k) for k in keys], order


def _eos_id(codec: Any) -> int | None:
    """The token that ends a reply: the tokenizer's own end token when it is one the backend stops at."""
    own = codec.tokenizer.eos_token_id
    if own is not None and own in codec.eos_ids:
        return int(own)
    return min(codec.eos_ids, default=None)


def _targets(task: Task, expert: ModelSource, *, backend: Backend, limit: int | None) -> list[Example]:
    """The expert's replies on its task's validation items, as examples.

    Each answer ends with the end token (an empty reply teaches stopping where the expert stopped);
    without an end token, empty replies are dropped. Prompts are cut from the left as the backend
    cuts them to leave room for the reply.

    Raises:
        DistillError: When no example is left.
    """
    codec = backend.codec  # type: ignore[attr-defined] - hf and vllm backends have one
    eos = _eos_id(codec)
    weights = {n: expert.get(n) for n in expert}
    backend.load(weights, fingerprint=fingerprint_tensors(weights))
    pairs = task.teacher_pairs(backend, split="validation", limit=limit)
    examples = []
    for context, reply in pairs:
        answer = tuple(codec.continuation_ids(reply)) + ((eos,) if eos is not None else ())
        if answer:
            examples.append(Example(tuple(codec.fit(codec.encode(context), len(answer))), answer))
    if not examples:
        raise DistillError(
            f"init.distill: the expert of task {task.name} replied nothing on its {len(pairs)} "
            "validation prompt(s); there is nothing to distill"
        )
    return examples


def distilled_merge(
    base: ModelSource,
    experts: Sequence[ModelSource],
    *,
    tasks: Sequence[Task],
    backend: Backend,
    spec: DistillConfig,
    seed: int,
    device: torch.device,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The learned merge of the experts: targets from each expert, then λ by :func:`learn_coefficients`.

    Args:
        base: The base model (a Hugging Face folder: the architecture is loaded from it).
        experts: The experts, in the order of ``tasks`` (expert ``k`` answers task ``k``).
        tasks: The tasks, each answering an item with one generation (see :func:`distill_obstacle`).
        backend: The evaluation backend; each expert is loaded into it to answer its task's prompts.
        spec: The ``init.distill`` settings.
        seed: Seed of the draws of examples.
        device: Where the coefficients are trained.
        progress: Called after each step with the step number and the loss.

    Returns:
        The merged weights (fp32; floating-point tensors merged, others copied from the base) and a
        JSON-ready record: the settings, the groups, λ per expert and group, the objective on all
        targets at the start and the end, and the first and last steps' losses.
    """
    model, names, groups, order = _architecture(base, grouping=spec.grouping)
    examples = [
        _targets(task, expert, backend=backend, limit=spec.max_items)
        for task, expert in zip(tasks, experts, strict=True)
    ]
    if device.type == "cuda":  # the evaluation backend now holds its share of the device
        need, free = memory_needed(base, experts=len(experts)), available_memory(device)
        if need > free:
            raise DistillError(
                f"init.distill: the fit needs about {need / 2**30:.1f} GiB on {device} and "
                f"{free / 2**30:.1f} GiB are free beside the evaluation backend"
            )
    theta0 = {n: base.get(n).to(device, torch.float32) for n in names}
    task_vectors = [{n: e.get(n).to(device, torch.float32) - theta0[n] for n in names} for e in experts]
    model.to(device)
    pad, eos = backend.codec.tokenizer.pad_token_id, _eos_id(backend.codec)  # type: ignore[attr-defined]
    pad_id = pad if pad is not None else (eos if eos is not None else 0)
    coefficients, losses = learn_coefficients(
        model,
        base=theta0,
        task_vectors=task_vectors,
        examples=examples,
        groups=groups,
        steps=spec.steps,
        lr=spec.lr,
        start=spec.start,
        batch_size=spec.batch_size,
        seed=seed,
        pad_id=pad_id,
        progress=progress,
    )
    with torch.no_grad():
        merged = merged_tensors(theta0, task_vectors, coefficients, groups=groups)
        start = merged_tensors(theta0, task_vectors, torch.full_like(coefficients, spec.start), groups=groups)
        objective = [
            targets_loss(model, w, examples, pad_id=pad_id, batch_size=spec.batch_size)
            for w in (start, merged)
        ]
    del model, start
    out = {n: base.get(n) for n in base}
    out.update({n: t.cpu() for n, t in merged.items()})
    del merged, theta0, task_vectors
    if device.type == "cuda":  # give the cached blocks back before the backend sizes its batches
        torch.cuda.empty_cache()
    record = {
        "settings": spec.model_dump(),
        "examples": [len(ex) for ex in examples],
        "groups": order,
        "coefficients": {
            t.name: [round(float(c), 6) for c in row] for t, row in zip(tasks, coefficients, strict=True)
        },
        # On every target at the start and at the end, and on the first and last steps' batches.
        "loss": {"start": objective[0], "end": objective[1], "first": losses[0], "last": losses[-1]},
    }
    return out, record
