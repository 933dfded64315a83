"""vLLM backend (optional extra ``vllm``, CUDA only): one engine per worker, weights updated in place.

The engine is built once from the base model folder. :meth:`VLLMBackend.load` hands each child's
tensors, named as in the Hugging Face checkpoint, to the engine's own model through the model class's
``load_weights`` method: vLLM's weight-loading path, which knows how each architecture stacks and
shards its parameters (``q_proj``/``k_proj``/``v_proj`` into ``qkv_proj`` and so on). No
per-architecture mapping is written here. The prefix cache is reset after every load.

Prompts are encoded and answers decoded by the same :class:`~cycleqd.evaluation.backends.codec.PromptCodec`
as the Hugging Face backend would use (chat template, truncation, end-of-sequence ids, stop strings),
and decoding is greedy, so both backends give the same answers for the same model up to the numerics
of their kernels.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cycleqd.errors import ConfigError
from cycleqd.evaluation.backends.codec import PromptCodec
from cycleqd.evaluation.backends.resident import ResidentBackend
from cycleqd.evaluation.base import Prompt
from cycleqd.weights.dtypes import dtype_name, parse_dtype


def vllm_unavailable_reason() -> str | None:
    """Why the vLLM backend cannot run here, or ``None`` when it can."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm is not installed (pip install 'cycleqd[vllm]' on a machine with a CUDA GPU)"
    if not torch.cuda.is_available():
        return "vllm needs a CUDA GPU and none is available"
    return None


class VLLMBackend(ResidentBackend):
    """A causal language model served by a vLLM engine in this process.

    Args:
        model_dir: The base model folder (config, weights, tokenizer).
        dtype: Dtype of the engine's weights (``auto``: the checkpoint's).
        chat_template: ``auto``, ``on`` or ``off`` (as for the Hugging Face backend).
        max_length: Longest prompt plus answer in tokens (default: the model's context size).
        gpu_memory_utilization: Share of the GPU's memory vLLM may take (weights plus KV cache).
        enforce_eager: Skip CUDA graphs (slower decoding, faster start).

    Raises:
        ConfigError: When vLLM or a CUDA GPU is missing.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str | torch.dtype = "auto",
        chat_template: str = "auto",
        max_length: int | None = None,
        gpu_memory_utilization: float = 0.85,
        enforce_eager: bool = False,
    ) -> None:
        reason = vllm_unavailable_reason()
        if reason:
            raise ConfigError(f"evaluation.backend is vllm but {reason}; use backend: hf")
        # The engine must live in this process so that load() reaches its model without shipping
        # the weights to another process (pickling them would fail, or cost a copy per child): this
        # overrides a user's setting on purpose.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.model_dir = Path(model_dir)
        self.codec = PromptCodec(self.model_dir, chat_template=chat_template, max_length=max_length)
        target = parse_dtype(dtype)
        # Cached prefixes hold keys and values computed with the previous child's weights: they are
        # used only where the engine can drop them after each load.
        extra = {} if hasattr(LLM, "reset_prefix_cache") else {"enable_prefix_caching": False}
        self.llm = LLM(
            model=str(self.model_dir),
            tokenizer=str(self.model_dir),
            dtype=dtype_name(target) if target is not None else "auto",
            max_model_len=self.codec.max_length,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            seed=0,
            **extra,
        )
        self.dtype = target
        self._fingerprint: str | None = None

    # -- weights -----------------------------------------------------------------------------------
    def _apply(self, fn: Callable[[torch.nn.Module], Any]) -> list[Any]:
        """Run ``fn`` on the engine's model; one result per worker (``apply_model``, or older vLLM's)."""
        if hasattr(self.llm, "apply_model"):
            return list(self.llm.apply_model(fn))
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        return [fn(model)]

    def load(self, weights: Mapping[str, torch.Tensor], *, fingerprint: str) -> None:
        """Load a model's weights into the engine in place, through vLLM's own weight loader.

        Args:
            weights: Tensors named as in the Hugging Face checkpoint.
            fingerprint: Identity of the weights; loading the current fingerprint again does nothing.

        Raises:
            ValueError: When the weights left parameters of the engine's model unset (the check vLLM's
                own loader makes at start-up; the backend then holds no valid model).
        """
        if fingerprint == self._fingerprint:
            return
        if self.llm is None:
            raise RuntimeError("this backend was closed; build a new one to load a model")
        self._fingerprint = None
        items = [(name, weights[name]) for name in weights]

        def load_and_list_unset(model: torch.nn.Module) -> list[str]:
            expected = {name for name, _ in model.named_parameters()}
            loaded = model.load_weights(iter(items))  # the names it set (None from older models)
            return [] if loaded is None else sorted(expected - set(loaded))

        unset = sorted({name for names in self._apply(load_and_list_unset) for name in names})
        if unset:
            raise ValueError(
                f"the weights left {len(unset)} parameter(s) of the vLLM model unset: "
                f"{', '.join(unset[:5])}; a child must hold every tensor of the base model"
            )
        # Versions whose reset reports failure return False; those that return nothing cannot be checked.
        if hasattr(self.llm, "reset_prefix_cache") and self.llm.reset_prefix_cache() is False:
            raise RuntimeError(
                "vLLM could not clear its prefix cache after new weights were loaded (requests still "
                "running?); its cached keys and values belong to the previous model, so scores would be wrong"
            )
        self._fingerprint = fingerprint

    def close(self) -> None:
        """Shut the engine down and free its GPU memory (weights and KV cache).

        Dropping the last reference is not enough with every vLLM version: the engine core keeps the
        memory until it is shut down. ``LLM.shutdown`` is used where it exists, else the engine core's.
        """
        llm, self.llm = self.llm, None
        self._fingerprint = None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)
        if shutdown is None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        else:
            warnings.warn(
                "this vLLM has neither LLM.shutdown nor an engine core to shut down: its GPU memory may "
                "stay taken until the process ends (a vLLM with the V1 engine frees it)",
                RuntimeWarning,
                stacklevel=2,
            )
        del llm
        self._free_device_memory()

    def _signature_parts(self) -> tuple[object, ...]:
        return ("vllm", *self.codec.signature_parts(), self.dtype)

    # -- generation --------------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Prompt], *, max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        """Greedy completions, cut before the first stop string (decoded as the HF backend does)."""
        self._require_model()
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            stop=list(stop) or None,
            stop_token_ids=sorted(self.codec.eos_ids),
        )
        inputs = [{"prompt_token_ids": self.codec.fit(self.codec.encode(p), max_new_tokens)} for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [self.codec.decode(list(o.outputs[0].token_ids), stop) for o in outputs]

    def loglikelihood(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation after its context (prompt log-probs)."""
        self._require_model()
        from vllm import SamplingParams

        seqs = []
        for ctx, cont in requests:
            cont_ids = self.codec.continuation_ids(cont)
            ctx_ids = self.codec.fit(self.codec.encode(ctx), len(cont_ids))
            seqs.append((ctx_ids + cont_ids, len(ctx_ids)))
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in seqs], params, use_tqdm=False)
        scores = []
        for (ids, start), out in zip(seqs, outputs, strict=True):
            lp = out.prompt_logprobs
            scores.append(float(sum(lp[i][ids[i]].logprob for i in range(start, len(ids)))))
        return scores
