"""``batch_size: auto``: batches sized from the model's shape, the sequences and the memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from cycleqd.evaluation.backends.batching import (
    FALLBACK_BATCH,
    MAX_AUTO_BATCH,
    ModelShape,
    auto_batch_size,
    batches,
    memory_budget,
)
from cycleqd.evaluation.backends.hf import HFBackend
from cycleqd.weights import fingerprint_tensors, open_model

PROMPTS = [f"prompt {i} " + "x" * (i % 7) for i in range(40)]


def test_the_shape_of_a_llama_and_of_a_gpt2() -> None:
    llama = LlamaConfig(
        num_hidden_layers=3,
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=160,
        vocab_size=1000,
    )
    shape = ModelShape.of(llama, torch.bfloat16)
    assert shape == ModelShape(
        kv_per_token=2 * 3 * 2 * 8, activations_per_token=2 * (4 * 64 + 160), vocab=1000, element_bytes=2
    )
    gpt2 = ModelShape.of(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=500), torch.float32)
    assert gpt2 == ModelShape(
        kv_per_token=2 * 2 * 4 * 8, activations_per_token=2 * (4 * 32 + 4 * 32), vocab=500, element_bytes=4
    )
    assert ModelShape.of(object(), torch.float32) is None


def test_sequence_cost_and_batch_size_arithmetic() -> None:
    shape = ModelShape(kv_per_token=10, activations_per_token=6, vocab=100, element_bytes=4)
    assert shape.sequence_bytes(5, logit_rows=1) == 5 * 16 * 4 + 100 * 4
    assert shape.sequence_bytes(5, logit_rows=5) == 5 * 16 * 4 + 5 * 100 * 4
    each = shape.sequence_bytes(5, logit_rows=1)
    assert auto_batch_size(shape, 5, logit_rows=1, budget=3 * each + each - 1) == 3
    assert auto_batch_size(shape, 5, logit_rows=1, budget=each - 1) == 1  # never 0
    assert auto_batch_size(shape, 5, logit_rows=1, budget=10**12) == MAX_AUTO_BATCH
    # Scoring keeps every row of logits: fewer sequences fit.
    assert auto_batch_size(shape, 5, logit_rows=5, budget=100 * each) < 100
    assert auto_batch_size(None, 5, logit_rows=1, budget=10**12) == FALLBACK_BATCH


def test_batches_take_their_size_from_their_first_item() -> None:
    sizes = {0: 2, 2: 3, 5: 10}
    assert list(batches([0, 1, 2, 3, 4, 5, 6], lambda i: sizes[i])) == [[0, 1], [2, 3, 4], [5, 6]]
    assert list(batches([], lambda i: 1)) == []


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads /proc/meminfo")
def test_the_cpu_budget_is_a_quarter_of_the_available_memory() -> None:
    line = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemAvailable:"))
    quarter = int(line.split()[1]) * 1024 // 4
    assert memory_budget(torch.device("cpu")) == pytest.approx(max(quarter, 256 << 20), rel=0.1)


class Recording(HFBackend):
    """The backend, noting the size of each generation batch (to see what ``auto`` chose)."""

    sizes: list[int]

    def _generate_batch(self, seqs, max_new_tokens, stop):
        self.sizes.append(len(seqs))
        return super()._generate_batch(seqs, max_new_tokens, stop)


@pytest.fixture(scope="module")
def source(tiny_model: Path):
    return open_model(tiny_model)


def _backend(tiny_model: Path, source, batch_size: int | None) -> Recording:
    b = Recording(tiny_model, batch_size=batch_size, dtype="float32")
    b.sizes = []
    b.load(source, fingerprint=fingerprint_tensors(source))
    return b


def test_auto_batches_give_the_answers_of_one_prompt_at_a_time(tiny_model: Path, source) -> None:
    auto = _backend(tiny_model, source, None)
    single = _backend(tiny_model, source, 1)
    got = auto.generate(PROMPTS, max_new_tokens=8)
    assert got == single.generate(PROMPTS, max_new_tokens=8)
    assert auto.sizes == [len(PROMPTS)], "a tiny model on this machine fits every prompt in one batch"
    requests = [(p, " x") for p in PROMPTS]
    assert auto.loglikelihood(requests) == pytest.approx(single.loglikelihood(requests), abs=1e-4)
