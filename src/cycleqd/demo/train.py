"""Training the demo's models: next-character prediction with the loss on the answer only.

A sequence is ``<s>Q:{question} A:{answer}</s>``; the prompt's positions carry no loss, so the model
learns to answer, not to write questions. Batches are drawn from a :class:`~cycleqd.demo.data.Mix` by a
seeded generator, the model starts from a seeded initialisation, and torch runs on a fixed number of
threads: the same seed gives the same weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cycleqd.demo.data import Mix, MixSampler
from cycleqd.demo.skills import SkillSplits

IGNORE = -100


@dataclass(frozen=True)
class TrainSettings:
    """Settings of one training stage.

    Attributes:
        steps: Optimiser steps.
        batch_size: Sequences per step.
        lr: Peak learning rate (AdamW).
        warmup: Fraction of the steps with a linear warm-up.
        weight_decay: AdamW weight decay.
    """

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    warmup: float = 0.05
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"training settings need steps >= 0, batch_size >= 1 and lr > 0, got {self}")

    def describe(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def encode_batch(tokenizer: Any, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, ...]:
    """Token ids, attention mask and labels of (prompt, answer) pairs, right-padded.

    Args:
        tokenizer: The character tokenizer (adds ``<s>`` before the prompt).
        pairs: (prompt, answer) pairs.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on the prompt and the padding).
    """
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=True)["input_ids"]
    answers = tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    seqs = [(p, [*a, eos]) for p, a in zip(prompts, answers, strict=True)]
    width = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for row, (p, a) in enumerate(seqs):
        n = len(p) + len(a)
        ids[row, :n] = torch.tensor(p + a)
        mask[row, :n] = 1
        labels[row, len(p) : n] = torch.tensor(a)
    return ids, mask, labels


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    warm = max(1, int(settings.warmup * settings.steps))
    if step < warm:
        return settings.lr * (step + 1) / warm
    frac = (step - warm) / max(1, settings.steps - warm)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(
    model: Any,
    tokenizer: Any,
    mix: Mix,
    splits: Mapping[str, SkillSplits],
    settings: TrainSettings,
    *,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train a model in place on a mix, loss on the answers only.

    Args:
        model: A ``LlamaForCausalLM`` (fp32).
        tokenizer: Its tokenizer.
        mix: What to train on.
        splits: Skill → splits (train items are used).
        settings: Steps, batch size, learning rate.
        seed: Seed of the batches.
        progress: Called after each step with (step, loss).

    Returns:
        The loss of each step.
    """
    sampler = MixSampler(mix, splits, random.Random(f"train/{seed}"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=settings.lr, betas=(0.9, 0.98), weight_decay=settings.weight_decay, eps=1e-8
    )
    model.train()
    losses = []
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, settings)
        ids, mask, labels = encode_batch(tokenizer, sampler.batch(settings.batch_size))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return losses
