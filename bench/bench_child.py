"""Building one mutated child of a ~1B-parameter Llama: streaming path vs the official code's way.

    .venv/bin/python bench/bench_child.py [--size 1b|tiny] [--dtype bfloat16|float32] [--rank 32]

Three measurements, each in a fresh subprocess (so peak memory is the process's own):

- ``streaming``: cycleqd's :class:`~cycleqd.engine.children.ChildBuilder` (crossover + svd-expert
  mutation), reading the parents tensor by tensor from memory-mapped safetensors. Two children are
  built: the first writes into fresh memory; the second into the first child's memory, handed back
  with ``recycle`` as the runners do once a child is saved or discarded: what every later generation
  costs (``steady state``);
- ``in-memory``: what the official code does: load the base and both parents whole with
  ``transformers.AutoModelForCausalLM.from_pretrained``, form the task vectors, merge and mutate in
  memory (same formulas, same expert SVD factors, the low-rank term multiplied in bfloat16 for a
  bfloat16 child as cycleqd does, in float32 and rounded where the CPU has no bfloat16 instructions,
  as cycleqd does too);
- the floor set by memory bandwidth: the bytes that must move (read both parents, write the child) over
  the copy bandwidth this machine measures for a large tensor;
- the floor set by arithmetic: the floating-point operations of the rank-k mutation products
  (2·k per mutated entry) over the best matrix-product rate this machine measures (a square product
  in the dtype the builder multiplies in). Whichever floor is higher bounds the build from below: on
  a CPU with few cores the arithmetic floor can exceed the bandwidth floor.

The two children are compared tensor by tensor (they agree within float rounding). Models are made
from a config (no download) under bench/out/child-<size>-<dtype>/ and reused on later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from model_diff import compare_models

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SKIP = ("norm", "embed_tokens", "lm_head")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _models(size: str, dtype: str) -> Path:
    from cycleqd.weights.synthetic import BILLION_LLAMA, TINY_LLAMA, synthetic_expert, synthetic_llama

    folder = OUT / f"child-{size}-{dtype}"
    if (folder / "done").exists():
        return folder
    cfg = BILLION_LLAMA if size == "1b" else {**TINY_LLAMA, "hidden_size": 256, "intermediate_size": 512}
    t = getattr(torch, dtype)
    print(f"making a synthetic {size} Llama and two experts in {folder} (once)", flush=True)
    synthetic_llama(folder / "base", seed=0, dtype=t, max_shard_bytes=2 * 1024**3, **cfg)
    for i in (1, 2):
        synthetic_expert(folder / "base", folder / f"e{i}", seed=i, max_shard_bytes=2 * 1024**3)
    (folder / "done").write_text("ok\n")
    return folder


def _svd_cache(folder: Path, rank: int) -> Path:
    """Rank-truncated SVDs of expert 1's task vector (the active expert), built once."""
    from cycleqd.operators import ExpertSVDCache, is_mutable
    from cycleqd.weights import open_model

    cache_dir = folder / f"svd-r{rank}"
    cache = ExpertSVDCache(cache_dir, rank=rank)
    if not cache.complete:
        base, expert = open_model(folder / "base"), open_model(folder / "e1")
        names = [n for n in base if is_mutable(n, len(base.shape(n)), SKIP)]
        print(f"computing rank-{rank} SVDs of {len(names)} expert matrices (once)", flush=True)
        cache.build(expert, base, names)
    return cache_dir


def _job(folder: Path):
    from cycleqd.engine.children import Job

    return Job(
        generation=0,
        child_id="g000000",
        active_task="e1",
        parents=("e1", "e2"),
        parent_paths=(str(folder / "e1"), str(folder / "e2")),
        seed=1234,
    )


def run_streaming(folder: Path, rank: int, save: Path | None) -> dict:
    """The child built by cycleqd's streaming builder."""
    from cycleqd.engine.children import ChildBuilder
    from cycleqd.operators import ExpertSVDCache, SVDExpertMutation
    from cycleqd.weights import open_model, save_model

    base = open_model(folder / "base")
    mutation = SVDExpertMutation(caches={"e1": ExpertSVDCache(folder / f"svd-r{rank}", rank=rank)}, rho=0.1)
    builder = ChildBuilder(base=base, mutation=mutation, skip_patterns=SKIP, dtype=None)
    start = time.perf_counter()
    weights, _, plan, record = builder.build(_job(folder))
    first = time.perf_counter() - start
    builder.recycle(weights)
    del weights
    start = time.perf_counter()
    weights, _, plan, record = builder.build(_job(folder))
    seconds = time.perf_counter() - start
    if save:
        save_model(weights, save, dtype=None)
    return {
        "seconds": seconds,
        "first": first,
        "peak": _peak_rss_bytes(),
        "weights": plan.weights["all"],
        "mutated": record["mutated"],
    }


def run_in_memory(folder: Path, rank: int, save: Path | None) -> dict:
    """The official code's way: three whole models in memory, task vectors, merge, mutate."""
    from transformers import AutoModelForCausalLM

    from cycleqd.operators import ExpertSVDCache, draw_crossover, is_mutable
    from cycleqd.operators.blocked import native_bf16_matmul
    from cycleqd.operators.random import make_generator
    from cycleqd.seeding import derive_seed
    from cycleqd.weights import save_model

    job = _job(folder)
    # The same draws as ChildBuilder.plan with the default crossover settings.
    plan = draw_crossover(generator=make_generator(job.seed, "crossover"), n_parents=2, mean=1.0, std=0.01)
    w1, w2 = plan.weights["all"]
    cache = ExpertSVDCache(folder / f"svd-r{rank}", rank=rank)
    # torch's bfloat16 product is a slow generic loop on CPUs without bfloat16 matrix instructions
    native = native_bf16_matmul(torch.device("cpu"))
    start = time.perf_counter()
    base, p1, p2 = (
        AutoModelForCausalLM.from_pretrained(folder / n, dtype="auto").state_dict()
        for n in ("base", "e1", "e2")
    )
    seed = derive_seed(job.seed, "mutation")
    child = {}
    for name, b in base.items():
        b32 = b.float()
        tau = w1 * (p1[name].float() - b32) + w2 * (p2[name].float() - b32)
        if is_mutable(name, b.ndim, SKIP):
            f = cache.get(name)
            r = torch.rand(f.S.shape, generator=make_generator(seed, name)) * 0.1
            a, v = f.U * (r * f.S).unsqueeze(0), f.Vh
            if b.dtype == torch.bfloat16 and native:  # the product cycleqd takes for a bfloat16 child
                tau += (a.bfloat16() @ v.bfloat16()).float()
            elif b.dtype == torch.bfloat16:  # the same product where bfloat16 products are not native
                tau += (a.bfloat16().float() @ v.bfloat16().float()).bfloat16().float()
            else:
                tau += a @ v
        child[name] = (b32 + tau).to(b.dtype)
    seconds = time.perf_counter() - start
    if save:
        save_model(child, save, dtype=None)
    return {"seconds": seconds, "peak": _peak_rss_bytes()}


def copy_bandwidth() -> float:
    """Bytes per second moved (read + write) by copying a 1 GiB float32 tensor, best of 5."""
    src = torch.ones(256 * 1024**2)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


def product_rate(dtype: torch.dtype) -> float:
    """Floating-point operations per second of a 2048 x 2048 x 2048 matrix product, best of 5."""
    n = 2048
    x, y = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(x, y, out=out)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(x, y, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _product_dtype(dtype: str) -> torch.dtype:
    """The dtype ChildBuilder multiplies a low-rank mutation in, on this machine, for a child in ``dtype``."""
    from cycleqd.engine.children import _low_rank_dtype
    from cycleqd.operators.blocked import native_bf16_matmul

    want = _low_rank_dtype(getattr(torch, dtype))
    return want if want == torch.float32 or native_bf16_matmul(torch.device("cpu")) else torch.float32


def _child(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False, env={**os.environ}
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(folder: Path, rtol: float) -> dict:
    """How far apart the two children are (``rtol``: one storage rounding step), and the model's size."""
    from cycleqd.operators import is_mutable
    from cycleqd.weights import open_model

    base = open_model(folder / "base")
    return {
        **compare_models(folder / "child-streaming", folder / "child-in-memory", rtol=rtol, atol=1e-6),
        "model_bytes": sum(base.numel(n) * base.dtype(n).itemsize for n in base),
        "n_params": sum(base.numel(n) for n in base),
        "mutated_entries": sum(base.numel(n) for n in base if is_mutable(n, len(base.shape(n)), SKIP)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["1b", "tiny"], default="1b")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--rank", type=int, default=32, help="rank of the expert SVDs (svd-expert mutation)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:  # one measurement, in its own process
        folder = Path(args.folder) if args.folder else None
        if args.measure == "idle":
            import transformers  # noqa: F401

            import cycleqd.engine.children  # noqa: F401

            result = {"peak": _peak_rss_bytes()}
        elif args.measure == "prepare":
            folder = _models(args.size, args.dtype)
            _svd_cache(folder, args.rank)
            result = {"folder": str(folder)}
        elif args.measure == "machine":
            dt = _product_dtype(args.dtype)
            result = {"bandwidth": copy_bandwidth(), "flops": product_rate(dt), "product_dtype": str(dt)}
        elif args.measure == "compare":
            result = compare(folder, _ulp(args.dtype))
        else:
            fn = run_streaming if args.measure == "streaming" else run_in_memory
            result = fn(folder, args.rank, Path(args.save) if args.save else None)
        print(json.dumps(result))
        return

    # The driver loads no model: a child process's peak RSS counts its parent's peak on Linux.
    sizes = [
        "--size",
        args.size,
        "--dtype",
        args.dtype,
        "--rank",
        str(args.rank),
        "--threads",
        str(args.threads),
    ]
    folder = Path(_child(["--measure", "prepare", *sizes])["folder"])
    common = [*sizes, "--folder", str(folder)]
    idle = _child(["--measure", "idle", *common])["peak"]
    ours = _child(["--measure", "streaming", *common, "--save", str(folder / "child-streaming")])
    theirs = _child(["--measure", "in-memory", *common, "--save", str(folder / "child-in-memory")])
    machine = _child(["--measure", "machine", *common])
    bandwidth, rate = machine["bandwidth"], machine["flops"]
    info = _child(["--measure", "compare", *common])
    model_bytes = info["model_bytes"]
    must_move = 3 * model_bytes  # read two parents, write the child
    floor = must_move / bandwidth
    flops = 2 * args.rank * info["mutated_entries"]  # U (m x k) times V (k x n): 2k per entry
    arithmetic = flops / rate
    ulp = _ulp(args.dtype)

    print(f"\n{args.size} Llama, {info['n_params'] / 1e9:.2f}B parameters, {args.dtype}: ", end="")
    print(f"one model = {model_bytes / 1e9:.2f} GB")
    print(f"svd-expert mutation of rank {args.rank} on {ours['mutated']} matrices; {args.threads} threads")
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; bytes that must move {must_move / 1e9:.2f} GB")
    print(
        f"matrix-product rate {rate / 1e9:.0f} GFLOP/s ({machine['product_dtype']}, 2048^3); "
        f"the rank-{args.rank} mutation needs {flops / 1e9:.1f} GFLOP"
    )
    print(f"libraries alone: {idle / 1e9:.2f} GB peak RSS\n")
    both = max(floor, arithmetic)
    print(
        f"{'path':<28}{'time s':>9}{'vs floor':>10}{'vs both':>9}"
        f"{'peak RSS GB':>13}{'(- libs)':>10}{'x model':>9}"
    )
    rows = [
        ("streaming, first child", {**ours, "seconds": ours["first"]}),
        ("streaming, steady state", ours),
        ("in memory (official code)", theirs),
    ]
    for label, r in rows:
        extra = r["peak"] - idle
        print(
            f"{label:<28}{r['seconds']:>9.2f}{r['seconds'] / floor:>9.2f}x{r['seconds'] / both:>8.2f}x"
            f"{r['peak'] / 1e9:>13.2f}{extra / 1e9:>10.2f}{extra / model_bytes:>8.2f}x"
        )
    print(f"{'bandwidth floor':<28}{floor:>9.2f}{1.0:>9.2f}x{floor / both:>8.2f}x")
    print(f"{'arithmetic floor':<28}{arithmetic:>9.2f}{arithmetic / floor:>9.2f}x{arithmetic / both:>8.2f}x")
    print("(vs floor: against the bandwidth floor; vs both: against the higher of the two floors)")
    print(
        f"\nstreaming (steady state) vs in-memory: {theirs['seconds'] / ours['seconds']:.1f}x faster, "
        f"{(theirs['peak'] - idle) / max(ours['peak'] - idle, 1):.1f}x less memory above the libraries"
    )
    agree = info["bad_fraction"] == 0 and not info["names_differ"]
    print(
        f"children {'agree' if agree else 'DIFFER'}: max |difference| {info['max_abs_diff']:.3g}, "
        f"{info['bad_fraction']:.2e} of elements beyond one storage rounding step ({ulp:.3g} relative)"
    )
    if not agree:
        sys.exit("the streaming child differs from the in-memory child")


def _ulp(dtype: str) -> float:
    """The storage dtype's rounding step near 1 (relative)."""
    return 2**-7 if dtype == "bfloat16" else 2**-23


if __name__ == "__main__":
    main()
