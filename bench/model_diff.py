"""Tensor-by-tensor comparison of two saved models, shared by the benchmarks."""

from __future__ import annotations

from pathlib import Path


def compare_models(a_dir: Path, b_dir: Path, *, rtol: float, atol: float) -> dict[str, float]:
    """Largest absolute difference, share of elements outside ``atol + rtol·|b|``, and the number of
    tensor names only one model has (then nothing else is compared)."""
    from cycleqd.weights import open_model

    a, b = open_model(a_dir), open_model(b_dir)
    if set(a) != set(b):
        return {"max_abs_diff": float("inf"), "bad_fraction": 1.0, "names_differ": len(set(a) ^ set(b))}
    worst, bad, total = 0.0, 0, 0
    for name in a:
        x, y = a[name].float(), b[name].float()
        diff = (x - y).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        bad += int((diff > atol + rtol * y.abs()).sum())
        total += diff.numel()
    return {"max_abs_diff": worst, "bad_fraction": bad / max(total, 1), "names_differ": 0}
