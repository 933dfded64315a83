"""Throughput of the evaluation backend's batched generation against ``transformers``' own ``generate``.

Run on demand (no download: the model is a tiny random Llama with a character-level tokenizer built here):

    .venv/bin/python bench/bench_generation.py [--prompts 64] [--max-new-tokens 32] [--batch-size 16]

Three ways decode greedily the same prompts with the same model: ``generate`` one prompt at a time,
``generate`` on batches of ``--batch-size`` prompts (in the given order, left-padded, as a user of
``transformers`` would batch them), and the backend (batches of the same size, prompts sorted by length,
finished sequences dropped from the batch); then the backend again with ``batch_size: auto`` (batches
sized from the model and the memory). The script checks that the outputs are identical and prints items
per second for each and the backend's speed-up over each.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from cycleqd.evaluation.backends.hf import HFBackend
from cycleqd.evaluation.chartokenizer import tiny_char_llama
from cycleqd.weights import open_model

WORDS = [
    "the",
    "model",
    "writes",
    "a",
    "function",
    "that",
    "returns",
    "the",
    "sum",
    "of",
    "two",
    "numbers",
    "select",
    "name",
    "from",
    "people",
    "where",
    "age",
]


def make_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Q{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) + "\nA:" for i in range(n)
    ]


def one_at_a_time(backend: HFBackend, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The baseline: transformers' ``generate`` on each prompt alone (greedy, KV cache)."""
    tok, model = backend.tokenizer, backend.model
    out = []
    with torch.inference_mode():
        for p in prompts:
            enc = tok(p, return_tensors="pt")
            ids = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=backend.pad_id
            )
            out.append(tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def batched(backend: HFBackend, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """transformers' ``generate`` on batches of prompts, left-padded (greedy, KV cache)."""
    tok, model = backend.tokenizer, backend.model
    side = tok.padding_side
    tok.padding_side = "left"
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                enc = tok(prompts[start : start + batch_size], return_tensors="pt", padding=True)
                ids = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=backend.pad_id
                )
                width = enc["input_ids"].shape[1]
                out.extend(tok.decode(row[width:], skip_special_tokens=True) for row in ids)
    finally:
        tok.padding_side = side
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_char_llama(
            Path(tmp) / "model",
            seed=args.seed,
            hidden_size=args.hidden_size,
            intermediate_size=4 * args.hidden_size,
            num_hidden_layers=args.layers,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=512,
        )
        backend = HFBackend(folder, batch_size=args.batch_size, dtype="float32", device="cpu")
        backend.load(open_model(folder), fingerprint="bench")
        prompts = make_prompts(args.prompts, args.seed)
        n_params = sum(p.numel() for p in backend.model.parameters())
        print(
            f"model: Llama, {n_params / 1e6:.2f}M parameters "
            f"(hidden {args.hidden_size}, {args.layers} layers), "
            f"char tokenizer; {len(prompts)} prompts, {args.max_new_tokens} new tokens each, "
            f"torch threads {torch.get_num_threads()}"
        )
        # Warm-up of every path (first calls allocate and pick kernels).
        backend.generate(prompts[:2], max_new_tokens=4)
        one_at_a_time(backend, prompts[:2], 4)
        batched(backend, prompts[:2], 4, 2)

        start = time.perf_counter()
        ours = backend.generate(prompts, max_new_tokens=args.max_new_tokens)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        single = one_at_a_time(backend, prompts, args.max_new_tokens)
        t_single = time.perf_counter() - start
        start = time.perf_counter()
        theirs = batched(backend, prompts, args.max_new_tokens, args.batch_size)
        t_theirs = time.perf_counter() - start
        backend.batch_size = None  # batch_size: auto (sized from the model and the memory)
        start = time.perf_counter()
        auto = backend.generate(prompts, max_new_tokens=args.max_new_tokens)
        t_auto = time.perf_counter() - start

    status = 0
    tokens = sum(len(backend.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ours)
    print(f"generated tokens: {tokens}")
    for label, other in (("one at a time", single), ("batched generate", theirs), ("batch size auto", auto)):
        mismatches = [i for i, (a, b) in enumerate(zip(ours, other, strict=True)) if a != b]
        print(f"outputs identical to {label}: {not mismatches}")
        for i in mismatches[:5]:
            print(f"  differs on prompt {i}: {ours[i]!r} vs {other[i]!r}", file=sys.stderr)
        status = status or int(bool(mismatches))
    for label, seconds in (
        ("one prompt at a time (model.generate)", t_single),
        (f"batched model.generate, batch size {args.batch_size}", t_theirs),
        (f"backend, batch size {args.batch_size}", t_ours),
        ("backend, batch size auto", t_auto),
    ):
        print(f"{label:<46}: {len(prompts) / seconds:8.2f} items/s  ({seconds:.2f} s)")
    print(
        f"ratio (backend / one at a time): {t_single / t_ours:.2f}x   "
        f"ratio (backend / batched generate): {t_theirs / t_ours:.2f}x   "
        f"ratio (auto / batch size {args.batch_size}): {t_ours / t_auto:.2f}x"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
