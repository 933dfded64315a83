"""Hugging Face transformers backend: one resident model and batched greedy decoding.

The model is built once from the base model folder; :meth:`HFBackend.load` copies each child's tensors
into its parameters in place (no new model, no new allocation). Generation sorts prompts by length,
left-pads each batch (attention mask and position ids account for the padding, so a prompt's answer
does not depend on its batch), runs the prompt through the model once, then decodes one token per step
from the KV cache, dropping finished sequences from the batch. A sequence ends at an end-of-sequence
token, at a stop string (cut, not included) or at ``max_new_tokens``. The cache has room for the tokens
to come from the start (:mod:`~cycleqd.evaluation.backends.kvcache`), so that a step does not copy it.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cycleqd.errors import ConfigError, ModelLoadError
from cycleqd.evaluation.backends.batching import ModelShape, auto_batch_size, batches, memory_budget
from cycleqd.evaluation.backends.codec import PromptCodec
from cycleqd.evaluation.backends.kvcache import roomy_cache
from cycleqd.evaluation.backends.loading import quiet_progress
from cycleqd.evaluation.backends.resident import ResidentBackend
from cycleqd.evaluation.base import Prompt
from cycleqd.weights.dtypes import dtype_name, parse_dtype


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; other names as given.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        The torch device.

    Raises:
        ConfigError: When CUDA is asked for but not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"evaluation.device is {device} but CUDA is not available here; use auto or cpu")
    return dev


class HFBackend(ResidentBackend):
    """A causal language model from a Hugging Face folder, kept resident.

    Args:
        model_dir: Folder with ``config.json``, the weights and the tokenizer files.
        dtype: Dtype of the resident model (``auto``: float32 on CPU, the checkpoint's otherwise).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: Prompts per forward pass; ``None`` sizes each batch from the model's shape, the
            batch's longest sequence and the memory available (:mod:`~.batching`).
        chat_template: ``auto`` applies the tokenizer's chat template when it has one; ``on`` requires
            one; ``off`` always uses plain text.
        max_length: Longest prompt plus answer in tokens (default: the model's context size); longer
            prompts lose their beginning.

    Raises:
        ModelLoadError: When the model or tokenizer cannot be loaded.
        ConfigError: When ``chat_template`` is ``on`` and the tokenizer has none.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str | torch.dtype = "auto",
        device: str = "auto",
        batch_size: int | None = None,
        chat_template: str = "auto",
        max_length: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        # The tokenizer, prompt and stop rules are the vLLM backend's too (checked before the model
        # loads: a wrong chat_template setting fails fast).
        self.codec = PromptCodec(self.model_dir, chat_template=chat_template, max_length=max_length)
        self.tokenizer = self.codec.tokenizer
        target = parse_dtype(dtype)
        if target is None and self.device.type == "cpu":
            target = torch.float32
        try:
            with quiet_progress():
                self.model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=target or "auto")
        except Exception as exc:
            raise ModelLoadError(f"cannot load the model in {self.model_dir}: {exc}") from exc
        self.model.to(self.device).eval()
        self.dtype = next(self.model.parameters()).dtype
        self._shape = ModelShape.of(self.model.config, self.dtype)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.pad_id is None:
            self.pad_id = 0
        self._cache_kw = (
            "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        )
        self._targets = dict(self.model.state_dict(keep_vars=True))
        self._fingerprint: str | None = None
        self._warned_truncation = False

    @property
    def use_chat_template(self) -> bool:
        """Whether prompts go through the tokenizer's chat template (the codec's setting)."""
        return self.codec.use_chat_template

    @property
    def eos_ids(self) -> set[int]:
        """Token ids that end a completion (the codec's)."""
        return self.codec.eos_ids

    @property
    def max_length(self) -> int:
        """Longest prompt plus answer in tokens (the codec's: both backends truncate alike)."""
        return self.codec.max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.codec.max_length = value

    # -- weights -----------------------------------------------------------------------------------
    @torch.no_grad()
    def load(self, weights: Mapping[str, torch.Tensor], *, fingerprint: str) -> None:
        """Copy a model's weights into the resident model, in place.

        Args:
            weights: Tensors named as in the base model (tied weights may be given once).
            fingerprint: Identity of the weights; loading the current fingerprint again does nothing.

        Raises:
            ValueError: When names or shapes do not match the resident model (the backend then holds
                no valid model until the next successful load).
        """
        if fingerprint == self._fingerprint:
            return
        if self.model is None:
            raise RuntimeError("this backend was closed; build a new one to load a model")
        self._fingerprint = None
        names = list(weights)
        unknown = [n for n in names if n not in self._targets]
        if unknown:
            raise ValueError(
                f"weights hold {len(unknown)} tensor(s) the model lacks: {', '.join(unknown[:5])}"
            )
        filled: set[int] = set()
        for name in names:
            target = self._targets[name]
            source = weights[name]
            if tuple(source.shape) != tuple(target.shape):
                raise ValueError(
                    f"tensor {name} has shape {list(source.shape)}, the model expects {list(target.shape)}"
                )
            target.copy_(source)
            filled.add(target.data_ptr())
        missing = [n for n, t in self._targets.items() if n not in weights and t.data_ptr() not in filled]
        if missing:
            raise ValueError(f"weights lack {len(missing)} tensor(s) of the model: {', '.join(missing[:5])}")
        self._fingerprint = fingerprint

    def close(self) -> None:
        """Drop the resident model (and its device memory); the backend answers no more queries."""
        self.model = None
        self._targets = {}
        self._fingerprint = None
        if self.device.type == "cuda":
            self._free_device_memory()

    @property
    def weights(self) -> Mapping[str, torch.Tensor]:  # noqa: D102
        return {name: t.detach() for name, t in self._targets.items()}

    def _signature_parts(self) -> tuple[object, ...]:
        template, max_length, vocab, eos = self.codec.signature_parts()
        return (template, dtype_name(self.dtype), max_length, vocab, eos)

    # -- prompts -----------------------------------------------------------------------------------
    def prompt_text(self, prompt: Prompt) -> str:
        """The text fed to the model for a prompt (chat template applied when in use)."""
        return self.codec.prompt_text(prompt)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (special tokens as the template or the tokenizer adds them)."""
        return self.codec.encode(prompt)

    def _fit(self, ids: list[int], room: int) -> list[int]:
        fitted = self.codec.fit(ids, room)
        if len(fitted) < len(ids) and not self._warned_truncation:
            warnings.warn(
                f"prompts longer than {len(fitted)} tokens lose their beginning "
                f"(max_length {self.max_length})",
                stacklevel=3,
            )
            self._warned_truncation = True
        return fitted

    def _forward(self, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        cache = kwargs.pop("cache", None)
        if cache is not None:
            kwargs[self._cache_kw] = cache
        out = self.model(**kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits, new_cache

    # -- generation --------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[Prompt], *, max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        """Greedy completions, cut before the first stop string.

        Args:
            prompts: Plain strings or chat messages.
            max_new_tokens: Most tokens generated per prompt.
            stop: Strings that end a completion (not included).

        Returns:
            One completion per prompt, in order.
        """
        self._require_model()
        encoded = [self._fit(self.encode(p), max_new_tokens) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        outputs: list[str] = [""] * len(encoded)
        lengths = [len(e) + max_new_tokens for e in encoded]
        for batch in self._batches(order, lengths, scoring=False):
            texts = self._generate_batch([encoded[i] for i in batch], max_new_tokens, list(stop))
            for i, text in zip(batch, texts, strict=True):
                outputs[i] = text
        return outputs

    def _batches(self, order: list[int], lengths: list[int], *, scoring: bool) -> Iterator[list[int]]:
        """Batches of ``order`` (longest first): ``batch_size`` each, or sized to the memory."""
        if self.batch_size is not None:
            size = self.batch_size
            return batches(order, lambda _i: size)
        budget = memory_budget(self.device)
        return batches(
            order,
            lambda i: auto_batch_size(
                self._shape, lengths[i], logit_rows=lengths[i] if scoring else 1, budget=budget
            ),
        )

    def _generate_batch(self, seqs: list[list[int]], max_new_tokens: int, stop: list[str]) -> list[str]:
        dev = self.device
        n = len(seqs)
        width = max(len(s) for s in seqs)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        # Each sequence's positions count its own tokens only, so padding does not shift them.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            cache=roomy_cache(self.model.config, room=max_new_tokens),
        )
        next_pos = positions[:, -1:] + 1
        generated: list[list[int]] = [[] for _ in range(n)]
        texts: list[str | None] = [None] * n
        alive = list(range(n))  # original rows still generating, in batch order
        longest_stop = max((len(s) for s in stop), default=0)
        for step in range(max_new_tokens):
            tokens = logits[:, -1, :].argmax(-1)
            chosen = tokens.tolist()  # one device-to-host transfer per step
            keep_idx = []
            for b, row in enumerate(alive):
                tok = chosen[b]
                if tok in self.eos_ids:
                    texts[row] = self.codec.decode(generated[row], stop)
                    continue
                generated[row].append(tok)
                if stop:
                    tail = self.tokenizer.decode(
                        generated[row][-(longest_stop + 8) :], skip_special_tokens=True
                    )
                    if any(s in tail for s in stop):
                        texts[row] = self.codec.decode(generated[row], stop)
                        continue
                keep_idx.append(b)
            if not keep_idx or step == max_new_tokens - 1:
                break
            if len(keep_idx) < len(alive):
                sel = torch.tensor(keep_idx, device=dev)
                cache.batch_select_indices(sel)
                tokens, mask, next_pos = tokens[sel], mask[sel], next_pos[sel]
                alive = [alive[b] for b in keep_idx]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=dev)], dim=1)
            logits, cache = self._forward(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                cache=cache,
                use_cache=True,
            )
            next_pos = next_pos + 1
        for row in range(n):
            if texts[row] is None:
                texts[row] = self.codec.decode(generated[row], stop)
        return [t or "" for t in texts]

    # -- scoring -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation after its context.

        The continuation is tokenised on its own and appended to the context's tokens.

        Args:
            requests: Pairs of (context, continuation).

        Returns:
            One log-likelihood per pair (0.0 for an empty continuation).
        """
        self._require_model()
        seqs: list[tuple[list[int], int]] = []
        for ctx, cont in requests:
            cont_ids = self.codec.continuation_ids(cont)
            ctx_ids = self._fit(self.encode(ctx), len(cont_ids))
            seqs.append((ctx_ids + cont_ids, len(cont_ids)))
        out = [0.0] * len(seqs)
        order = sorted((i for i in range(len(seqs)) if seqs[i][1] > 0), key=lambda i: -len(seqs[i][0]))
        for batch in self._batches(order, [len(s) for s, _ in seqs], scoring=True):
            width = max(len(seqs[i][0]) for i in batch) - 1
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                s = seqs[i][0][:-1]
                ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[row, : len(s)] = 1
            logits, _ = self._forward(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False
            )
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(batch):
                seq, n_cont = seqs[i]
                targets = torch.tensor(seq[-n_cont:], device=self.device)
                positions = torch.arange(len(seq) - 1 - n_cont, len(seq) - 1, device=self.device)
                out[i] = float(logprobs[row, positions, targets].double().sum())
        return out
