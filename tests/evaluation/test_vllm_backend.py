"""Parity of the vLLM backend with the Hugging Face backend (needs a CUDA GPU and the vllm extra)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cycleqd.evaluation.backends.vllm import vllm_unavailable_reason

REASON = vllm_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"vLLM backend not testable: {REASON}"),
]

PROMPTS = ["Q:add 3 then double A:", "Q:count rows A:", "hello", "Q:make dir foo A:", "x" * 40]


def _perturbed(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: t + 0.05 * torch.randn(t.shape, generator=g).to(t.dtype) for n, t in weights.items()}


def test_same_answers_as_the_hf_backend_before_and_after_a_weight_update(tmp_path: Path) -> None:
    from cycleqd.evaluation.backends.hf import HFBackend
    from cycleqd.evaluation.backends.vllm import VLLMBackend
    from cycleqd.evaluation.chartokenizer import tiny_char_llama
    from cycleqd.weights import open_model

    # head_dim 32: attention kernels on the GPU refuse the smallest head sizes.
    folder = tiny_char_llama(tmp_path / "m", hidden_size=128, num_attention_heads=4, num_key_value_heads=4)
    base = open_model(folder)
    weights = {n: base[n] for n in base}
    hf = HFBackend(folder, dtype="float32", device="cuda")
    vl = VLLMBackend(folder, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3)
    for fp, w in (("base", weights), ("child", _perturbed(weights, 1))):
        hf.load(w, fingerprint=fp)
        vl.load(w, fingerprint=fp)
        assert vl.generate(PROMPTS, max_new_tokens=24, stop=["\n"]) == hf.generate(
            PROMPTS, max_new_tokens=24, stop=["\n"]
        )
        pairs = [("Q:1+1 A:", "2"), ("ab", "cd")]
        assert vl.loglikelihood(pairs) == pytest.approx(hf.loglikelihood(pairs), abs=1e-3)
    # A child without one of the base's tensors is refused, naming it, as vLLM's own loader would.
    partial = {n: t for n, t in weights.items() if n != "model.layers.0.mlp.down_proj.weight"}
    with pytest.raises(ValueError, match=r"left 1 parameter\(s\) of the vLLM model unset: .*down_proj"):
        vl.load(partial, fingerprint="partial")
    with pytest.raises(RuntimeError, match="no model loaded"):
        vl.generate(PROMPTS[:1], max_new_tokens=4)
    # Closing the engine hands its GPU memory (weights and KV cache, 30% of the GPU) back.
    hf.close()
    free_open, _ = torch.cuda.mem_get_info()
    vl.close()
    free_closed, total = torch.cuda.mem_get_info()
    assert free_closed - free_open > 0.2 * total
    with pytest.raises(RuntimeError, match="this backend was closed"):
        vl.load(weights, fingerprint="base")
