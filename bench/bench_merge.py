"""Benchmark ``cycleqd merge`` against mergekit on identical configs and models.

    .venv/bin/python bench/bench_merge.py --size tiny
    .venv/bin/python bench/bench_merge.py --size 1b [--dtype float32|bfloat16] [--experts 2]

What it does:

1. Creates ``bench/.venv-mergekit`` (once) and installs mergekit there. torch is installed first at
   this environment's version (the CPU build on this machine's disk), so pip never pulls a CUDA build.
2. Builds synthetic Llamas from a config under ``bench/out/`` (once per size and dtype): a base and
   2–3 experts (``cycleqd.weights.synthetic``). ``--size 1b`` is about 1.1B parameters per model.
3. For each of linear, task_arithmetic and ties, writes one YAML and runs both tools on it as
   subprocesses, with a warm page cache and the same output shard size. Wall time is measured around
   the process; peak memory is the process's peak resident set size (``wait4`` maxrss).
4. Compares the outputs tensor by tensor (max |Δ| and the share of elements outside tolerance) and
   prints a table with the ratios mergekit / cycleqd (time: > 1 means cycleqd is faster; memory:
   > 1 means cycleqd uses less).

Arithmetic is float32 in both tools (``dtype: float32`` in the YAML); models and outputs are stored in
``--dtype``. With float32 storage the outputs agree to float32 rounding; with bfloat16 storage they agree
to one bfloat16 rounding step, except that TIES may keep different entries where task-vector magnitudes
tie at the trim threshold (bfloat16 differences are coarse), which is reported as a share of elements.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from model_diff import compare_models

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-mergekit"
OUT = HERE / "out"
MERGEKIT_VERSION = "0.1.5"
METHODS = ("linear", "task_arithmetic", "ties")


@dataclass
class Run:
    tool: str
    method: str
    seconds: float
    peak_rss_mib: float
    returncode: int


# -- environment -------------------------------------------------------------------------------


def ensure_mergekit() -> Path:
    """The mergekit-yaml executable of bench/.venv-mergekit, installing it on first use."""
    exe = VENV / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    print(f"creating {VENV} with mergekit {MERGEKIT_VERSION} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    torch_version = torch.__version__.split("+")[0]
    # torch first, pinned to ours: mergekit only asks for torch>=2.0, so pip keeps this CPU build.
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    subprocess.run([*pip, f"mergekit=={MERGEKIT_VERSION}"], check=True)
    return exe


def cycleqd_command() -> list[str]:
    """How to run ``cycleqd``: the console module, or the merge command alone if other commands fail."""
    probe = subprocess.run([sys.executable, "-m", "cycleqd", "--help"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "cycleqd"]
    print("note: `python -m cycleqd` does not start; running the merge command alone", flush=True)
    code = (
        "import sys; from cycleqd.cli.app import app; import cycleqd.cli.cmd_merge; "
        "app(args=sys.argv[1:], prog_name='cycleqd')"
    )
    return [sys.executable, "-c", code]


# -- models ------------------------------------------------------------------------------------


def build_models(size: str, dtype: torch.dtype, n_experts: int) -> dict[str, Path]:
    """Base and experts under bench/out/<size>-<dtype>/, built once."""
    from cycleqd.weights.synthetic import BILLION_LLAMA, TINY_LLAMA, synthetic_expert, synthetic_llama

    root = OUT / f"models-{size}-{str(dtype).removeprefix('torch.')}"
    paths = {"base": root / "base", **{f"e{i}": root / f"e{i}" for i in range(1, n_experts + 1)}}
    if all((p / "config.json").exists() for p in paths.values()):
        return paths
    cfg = BILLION_LLAMA if size == "1b" else TINY_LLAMA
    t0 = time.perf_counter()
    if not (paths["base"] / "config.json").exists():
        print(f"building the {size} base model in {root} ...", flush=True)
        synthetic_llama(paths["base"], seed=0, dtype=dtype, **cfg)
    for i in range(1, n_experts + 1):
        if not (paths[f"e{i}"] / "config.json").exists():
            print(f"building expert {i} ...", flush=True)
            synthetic_expert(paths["base"], paths[f"e{i}"], seed=i)
    print(f"models ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return paths


def configs(paths: dict[str, Path], out_dtype: str) -> dict[str, dict]:
    """One YAML (as a dict) per method, identical for both tools."""
    experts = [k for k in paths if k != "base"]
    weights = [0.5, 0.3, 0.2][: len(experts)]
    densities = [0.5, 0.7, 0.6][: len(experts)]
    common = {"dtype": "float32", "out_dtype": out_dtype}
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": str(paths[e]), "parameters": {"weight": w}}
                for e, w in zip(experts, weights, strict=True)
            ],
            **common,
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": str(paths["base"]),
            "models": [
                {"model": str(paths[e]), "parameters": {"weight": w + 0.2}}
                for e, w in zip(experts, weights, strict=True)
            ],
            "parameters": {"lambda": 0.8},
            **common,
        },
        "ties": {
            "merge_method": "ties",
            "base_model": str(paths["base"]),
            "models": [{"model": str(paths["base"])}]
            + [
                {"model": str(paths[e]), "parameters": {"weight": w, "density": d}}
                for e, w, d in zip(experts, weights, densities, strict=True)
            ],
            "parameters": {"normalize": True, "int8_mask": True},
            **common,
        },
    }


# -- running -----------------------------------------------------------------------------------


def warm_cache(paths: list[Path]) -> None:
    """Flush pending writes, then read every weight file once, so both tools start alike.

    Without the flush a run would pay for writing back the previous run's output.
    """
    os.sync()
    buf = bytearray(64 << 20)
    for p in paths:
        for f in sorted(p.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


# Linux carries a parent's peak RSS into the ru_maxrss of a child it forks (this script maps whole
# models while comparing them), so each tool is started by a small wrapper process and measured there.
_WRAPPER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Run a command; return wall seconds, its peak RSS in MiB and the exit code."""
    rss_file = log.with_suffix(".maxrss")
    with open(log, "w") as fh:
        start = time.perf_counter()
        rc = subprocess.run(
            [sys.executable, "-c", _WRAPPER, str(rss_file), *cmd], stdout=fh, stderr=subprocess.STDOUT
        ).returncode
        seconds = time.perf_counter() - start
    rss_kib = int(rss_file.read_text()) if rss_file.exists() else 0
    return seconds, rss_kib / 1024, rc


def agree(row: dict, *, bfloat16: bool) -> bool:
    """Whether both tools' outputs agree: every element within tolerance, except that TIES may keep
    other entries where a magnitude ties at the trim threshold or the elected sign is that of a sum
    within rounding of zero (summation order differs): at most 1e-5 of the elements in float32
    (measured at 1B: 7e-7), 1e-4 with bfloat16 storage, whose coarse values tie more often."""
    if row["names_differ"]:
        return False
    allowed = (1e-4 if bfloat16 else 1e-5) if row["method"] == "ties" else 0.0
    return row["bad_fraction"] <= allowed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "1b"], default="tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--experts", type=int, choices=[2, 3], default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--shard-size", default="1GB", help="output shard size for both tools (bytes, GB)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest is kept")
    parser.add_argument("--keep", action="store_true", help="keep the merged outputs")
    args = parser.parse_args()

    mergekit = ensure_mergekit()
    cycleqd = cycleqd_command()
    dtype = getattr(torch, args.dtype)
    paths = build_models(args.size, dtype, args.experts)
    shard_bytes = int(float(args.shard_size.upper().removesuffix("GB")) * 1e9)
    rtol, atol = (2**-7, 1e-6) if dtype == torch.bfloat16 else (1e-5, 1e-6)
    work = OUT / f"runs-{args.size}-{args.dtype}"
    work.mkdir(parents=True, exist_ok=True)

    rows = []
    for method in args.methods.split(","):
        cfg = configs(paths, args.dtype)[method]
        cfg_path = work / f"{method}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        outs = {"cycleqd": work / f"{method}-cycleqd", "mergekit": work / f"{method}-mergekit"}
        cmds = {
            "cycleqd": [
                *cycleqd, "merge", str(cfg_path), "--out", str(outs["cycleqd"]), "--no-progress",
                "--shard-size", str(shard_bytes),
            ],
            "mergekit": [
                str(mergekit), str(cfg_path), str(outs["mergekit"]), "--quiet", "--out-shard-size",
                str(shard_bytes), "--no-write-model-card",
            ],
        }  # fmt: skip
        runs: dict[str, Run] = {}
        for _ in range(args.repeat):
            for tool in ("cycleqd", "mergekit"):
                shutil.rmtree(outs[tool], ignore_errors=True)
                warm_cache(list(paths.values()))
                seconds, rss, rc = timed(cmds[tool], work / f"{method}-{tool}.log")
                print(f"{method:16s} {tool:9s} {seconds:8.1f} s  {rss:8.0f} MiB", flush=True)
                if rc != 0:
                    print((work / f"{method}-{tool}.log").read_text()[-3000:])
                    raise SystemExit(
                        f"{tool} failed on {method} (exit {rc}); log: {work / f'{method}-{tool}.log'}"
                    )
                prev = runs.get(tool)
                if prev is not None:  # fastest time, highest peak over the repeats
                    seconds, rss = min(seconds, prev.seconds), max(rss, prev.peak_rss_mib)
                runs[tool] = Run(tool, method, seconds, rss, rc)
        diff = compare_models(outs["cycleqd"], outs["mergekit"], rtol=rtol, atol=atol)
        rows.append(
            {
                "method": method,
                "cycleqd": asdict(runs["cycleqd"]),
                "mergekit": asdict(runs["mergekit"]),
                **diff,
            }
        )
        if not args.keep:
            for p in outs.values():
                shutil.rmtree(p, ignore_errors=True)

    print()
    print(f"size={args.size} storage={args.dtype} experts={args.experts} shard={args.shard_size} "
          f"threads={torch.get_num_threads()} rtol={rtol:g} atol={atol:g}")  # fmt: skip
    header = (
        f"{'method':16s} {'cycleqd s':>10s} {'mergekit s':>11s} {'speedup':>8s} "
        f"{'cycleqd MiB':>12s} {'mergekit MiB':>13s} {'mem ratio':>10s} {'max |Δ|':>10s} "
        f"{'outside tol':>12s} {'outputs':>8s}"
    )
    print(header)
    print("-" * len(header))
    disagree = []
    for r in rows:
        r["agree"] = agree(r, bfloat16=dtype == torch.bfloat16)
        if not r["agree"]:
            disagree.append(r["method"])
        c, m = r["cycleqd"], r["mergekit"]
        ct, mt, cm, mm = c["seconds"], m["seconds"], c["peak_rss_mib"], m["peak_rss_mib"]
        print(
            f"{r['method']:16s} {ct:10.2f} {mt:11.2f} {mt / ct:7.2f}x {cm:12.0f} {mm:13.0f} {mm / cm:9.2f}x "
            f"{r['max_abs_diff']:10.2e} {r['bad_fraction']:11.2e} {'agree' if r['agree'] else 'DIFFER':>8s}"
        )
    result = work / "results.json"
    result.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print("\nspeedup = mergekit time / cycleqd time; mem ratio = mergekit peak RSS / cycleqd peak RSS")
    print(f"results: {result}")
    if disagree:
        sys.exit(f"outputs differ beyond tolerance for: {', '.join(disagree)}")


if __name__ == "__main__":
    main()
